{{/*
The chart name, overridable.
*/}}
{{- define "eigenloop.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name prefix of every resource. Cut to 63 characters because some Kubernetes name
fields are limited to that (DNS-1123 labels); components append a short suffix, so keep release
names short. When the release name already contains the chart name, it is used as is.
*/}}
{{- define "eigenloop.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "eigenloop.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels: the selector labels plus labels that may change between upgrades.
*/}}
{{- define "eigenloop.labels" -}}
helm.sh/chart: {{ include "eigenloop.chart" . }}
{{ include "eigenloop.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: eigenloop
{{- end }}

{{/*
Selector labels: only name and instance, because a workload's selector cannot change after
creation. Components add app.kubernetes.io/component (also fixed for a workload's life).
*/}}
{{- define "eigenloop.selectorLabels" -}}
app.kubernetes.io/name: {{ include "eigenloop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels and selector labels of one component. Call with (dict "ctx" $ "component" "daemon").
*/}}
{{- define "eigenloop.componentLabels" -}}
{{ include "eigenloop.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "eigenloop.componentSelectorLabels" -}}
{{ include "eigenloop.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
The ServiceAccount the pods run as.
*/}}
{{- define "eigenloop.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "eigenloop.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image reference. An empty tag means "<appVersion>-<variant>", the variant following the GPU
switch unless set: a CPU image on a GPU node would leave the GPU idle.
*/}}
{{- define "eigenloop.image" -}}
{{- $variant := .Values.image.variant | default (ternary "cuda" "cpu" .Values.gpu.enabled) }}
{{- if and .Values.gpu.enabled (eq $variant "cpu") }}
{{- fail "image.variant=cpu with gpu.enabled=true: the CPU image cannot use the GPU; use variant cuda or set gpu.enabled=false" }}
{{- end }}
{{- $tag := .Values.image.tag | default (printf "%s-%s" .Chart.AppVersion $variant) }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{/*
The daemon's requests and limits, with the GPU when enabled (requests equal limits for extended
resources, as the device plugin requires).
*/}}
{{- define "eigenloop.daemonResources" -}}
requests:
  {{- toYaml .Values.daemon.resources.requests | nindent 2 }}
  {{- if .Values.gpu.enabled }}
  nvidia.com/gpu: {{ .Values.gpu.count }}
  {{- end }}
limits:
  {{- toYaml .Values.daemon.resources.limits | nindent 2 }}
  {{- if .Values.gpu.enabled }}
  nvidia.com/gpu: {{ .Values.gpu.count }}
  {{- end }}
{{- end }}

{{/*
The partition count of the streams worker's input topics: topics.partitions when set, else the
catalogue's (schemas/topics.py: market.events, agent.actions and agent.outcomes have 6).
*/}}
{{- define "eigenloop.inputPartitions" -}}
{{- if gt (int .Values.topics.partitions) 0 }}{{ int .Values.topics.partitions }}{{ else }}6{{ end }}
{{- end }}

{{/*
The settings file (schemas/settings.py) rendered from .Values.config plus what the chart
manages itself. Secrets are not in it: they arrive as environment variables from Secrets.
*/}}
{{- define "eigenloop.settings" -}}
{{- $managed := dict
  "live_trading" .Values.daemon.liveTrading.enabled
  "kafka" (dict "bootstrap" .Values.kafka.bootstrap "topic_prefix" .Values.kafka.topicPrefix "security_protocol" .Values.kafka.securityProtocol)
  "analytics" (dict "dsn" (printf "%s/%s" (trimSuffix "/" .Values.clickhouse.url) .Values.clickhouse.database) "username" .Values.clickhouse.username)
  "http" (dict "host" "0.0.0.0" "port" (int .Values.daemon.httpPort))
  "executor" (dict "mode" (ternary "live" "paper" .Values.daemon.liveTrading.enabled) "kill_switch_file" (printf "%s/KILL" .Values.daemon.dataDir))
  "streams" (dict "web_port" (int .Values.streams.webPort))
}}
{{- if .Values.kafka.sasl.mechanism }}
{{- $_ := set $managed.kafka "sasl_mechanism" .Values.kafka.sasl.mechanism }}
{{- $_ := set $managed.kafka "sasl_username" .Values.kafka.sasl.username }}
{{- end }}
{{- if .Values.kafka.tls.existingSecret }}
{{- $_ := set $managed.kafka "ssl_cafile" "/etc/eigenloop/kafka-ca/ca.crt" }}
{{- end }}
{{- $settings := mustMergeOverwrite (deepCopy .Values.config) $managed }}
{{- toYaml $settings }}
{{- end }}

{{/*
Environment shared by every eigenloop container: where the settings file is, writable homes on
the read-only root filesystem, and secret values from Secrets (never from values).
*/}}
{{- define "eigenloop.env" -}}
- name: EIGENLOOP_CONFIG
  value: /etc/eigenloop/config.yaml
- name: HOME
  value: /tmp
- name: XDG_CACHE_HOME
  value: /tmp/.cache
- name: MPLCONFIGDIR
  value: /tmp/matplotlib
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
{{- if .Values.kafka.sasl.existingSecret }}
- name: EIGENLOOP_KAFKA__SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.existingSecret }}
      key: {{ .Values.kafka.sasl.passwordKey }}
{{- end }}
{{- if .Values.clickhouse.existingSecret }}
- name: EIGENLOOP_ANALYTICS__PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.clickhouse.existingSecret }}
      key: {{ .Values.clickhouse.passwordKey }}
{{- end }}
{{- end }}

{{/*
Volumes shared by every eigenloop pod: the settings, an in-memory /tmp, the Kafka CA.
*/}}
{{- define "eigenloop.volumes" -}}
- name: config
  configMap:
    name: {{ include "eigenloop.fullname" . }}
- name: tmp
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- if .Values.kafka.tls.existingSecret }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.kafka.tls.existingSecret }}
    items:
      - key: {{ .Values.kafka.tls.caKey }}
        path: ca.crt
{{- end }}
{{- end }}

{{- define "eigenloop.volumeMounts" -}}
- name: config
  mountPath: /etc/eigenloop/config.yaml
  subPath: config.yaml
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if .Values.kafka.tls.existingSecret }}
- name: kafka-ca
  mountPath: /etc/eigenloop/kafka-ca
  readOnly: true
{{- end }}
{{- end }}

{{/*
Pod-level security: never root, the runtime's default seccomp profile.
*/}}
{{- define "eigenloop.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Container-level security: read-only root filesystem, no privilege escalation, no capabilities.
*/}}
{{- define "eigenloop.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: ["ALL"]
{{- end }}

{{/*
The runbook URL of an alert. Call with (dict "ctx" $ "alert" "EigenloopConsumerLag").
*/}}
{{- define "eigenloop.runbookUrl" -}}
{{- printf "%s/%s.md" (trimSuffix "/" .ctx.Values.monitoring.prometheusRule.runbookUrlBase) .alert }}
{{- end }}

{{/*
Values checks that a schema cannot express.
*/}}
{{- define "eigenloop.validate" -}}
{{- if and .Values.flink.enabled (not .Values.flink.image) }}
{{- fail "flink.enabled=true needs flink.image: a Flink 2.2 image with PyFlink 2.2.1, eigenloop and the Kafka connector jar" }}
{{- end }}
{{- if and .Values.flink.enabled (not .Values.flink.checkpointDir) }}
{{- fail "flink.enabled=true needs flink.checkpointDir: a URI every Flink pod can reach (s3://..., hdfs://...), where exactly-once output is committed from" }}
{{- end }}
{{- $partitions := int (include "eigenloop.inputPartitions" .) }}
{{- if gt (int .Values.streams.replicas) $partitions }}
{{- fail (printf "streams.replicas=%d is more than the %d partitions of the streams worker's input topics: the extra workers would get no partition. Lower streams.replicas or raise topics.partitions" (int .Values.streams.replicas) $partitions) }}
{{- end }}
{{- if and .Values.daemon.liveTrading.enabled (not .Values.exchangeCredentials.existingSecret) }}
{{- fail "daemon.liveTrading.enabled=true needs exchangeCredentials.existingSecret (a Secret with the exchange API keys)" }}
{{- end }}
{{- if and .Values.kafka.sasl.mechanism (not .Values.kafka.sasl.existingSecret) }}
{{- fail "kafka.sasl.mechanism is set but kafka.sasl.existingSecret is empty: name the Secret holding the SASL password" }}
{{- end }}
{{- if and (hasPrefix "SASL" .Values.kafka.securityProtocol) (not .Values.kafka.sasl.mechanism) }}
{{- fail (printf "kafka.securityProtocol=%s needs kafka.sasl.mechanism" .Values.kafka.securityProtocol) }}
{{- end }}
{{- end }}
