"""The chart renders offline with every ci/ values file, lints clean, validates against the
Kubernetes JSON schemas, and the manifests have the properties operators rely on."""

from __future__ import annotations

import hashlib
import re

import pytest

from tests.ops.chart import CHART, CI_VALUES, REPO, load_values, lint, render_files, render_values

# (id, values files); "default" renders the chart's own values.yaml only.
SCENARIOS = {
    "default": (),
    "gpu-off": ("gpu-off-values.yaml",),
    "gpu-on": ("gpu-on-values.yaml",),
    "live-trading": ("live-trading-values.yaml",),
    "monitoring": ("monitoring-values.yaml",),
    "everything": ("gpu-on-values.yaml", "live-trading-values.yaml", "monitoring-values.yaml"),
}
GPU_ON = {"default", "gpu-on", "live-trading", "monitoring", "everything"}
# Kubernetes versions to validate against: the chart's minimum (Chart.yaml kubeVersion) and a
# current one.
KUBE_VERSIONS = ("1.27.0", "1.33.0")
# CRD kinds have no schema in kubernetes-validate; test_monitoring_objects checks them instead.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}


@pytest.fixture(params=sorted(SCENARIOS), scope="module")
def scenario(request):
    return request.param, render_files(*SCENARIOS[request.param])


def containers(pod: dict) -> list[dict]:
    return pod.get("initContainers", []) + pod["containers"]


def test_every_ci_values_file_is_covered():
    covered = {f for files in SCENARIOS.values() for f in files} | {"flink-values.yaml"}
    assert covered == {p.name for p in CI_VALUES.glob("*.yaml")}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_lint_clean(name):
    report = lint(load_values(*SCENARIOS[name]))
    # severity 1 is INFO ("icon is recommended"); warnings and errors fail strict lint
    problems = [m for m in report["messages"] if m["severity"] >= 2] + [{"error": e} for e in report["errors"]]
    assert not problems, problems


def test_kubernetes_schemas(scenario):
    import kubernetes_validate

    name, r = scenario
    failures = []
    for doc in r.all():
        if doc["kind"] in CRD_KINDS:
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                failures.append(f"{doc['kind']}/{doc['metadata']['name']} @ {version}: {e.message} at {list(e.path)}")
    assert not failures, "\n".join(failures)


def test_expected_objects(scenario):
    name, r = scenario
    kinds = sorted({d["kind"] for d in r.all()})
    for kind in ("StatefulSet", "Deployment", "Service", "ConfigMap", "ServiceAccount", "Role", "RoleBinding",
                 "PodDisruptionBudget", "NetworkPolicy", "Job"):
        assert kind in kinds, f"{name}: no {kind} in {kinds}"
    assert not r.kind("Secret"), "the chart must only reference Secrets, never create them"
    r.get("StatefulSet", "eigenloop-daemon")
    r.get("Deployment", "eigenloop-streams")
    r.get("Deployment", "eigenloop-sink")
    assert {p["metadata"]["name"] for p in r.kind("PodDisruptionBudget")} == {
        "eigenloop-daemon", "eigenloop-streams", "eigenloop-sink"}


def test_daemon_probes_prestop_and_snapshots(scenario):
    _, r = scenario
    sts = r.get("StatefulSet", "eigenloop-daemon")
    assert sts["spec"]["replicas"] == 1, "two learners would fork the policy"
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    port = {p["name"]: p["containerPort"] for p in c["ports"]}["http"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["eigenloop", "snapshot", "now"]
    assert pod["terminationGracePeriodSeconds"] >= 60
    assert c["command"] == ["eigenloop"] and c["args"][0] == "daemon"
    (init,) = pod["initContainers"]
    assert init["args"] == ["learner", "bootstrap"], "the first model is bootstrapped before the probes start"
    assert init["resources"] == c["resources"]
    env = {e["name"]: e for e in c["env"]}
    data_dir = env["EIGENLOOP_DATA_DIR"]["value"]
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    mount = next(m for m in c["volumeMounts"] if m["name"] == claim["metadata"]["name"])
    assert mount["mountPath"] == data_dir, "snapshots must land on the PVC"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"
    svc = r.get("Service", "eigenloop-daemon")
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    config = r.get("ConfigMap", "eigenloop")["data"]["config.yaml"]
    assert f"port: {port}" in config and "host: 0.0.0.0" in config


def test_gpu_requested_exactly_when_enabled(scenario):
    name, r = scenario
    gpu_on = name in GPU_ON
    for where, pod in r.pod_specs():
        for c in containers(pod):
            res = c["resources"]
            has = "nvidia.com/gpu" in res.get("requests", {}) or "nvidia.com/gpu" in res.get("limits", {})
            want = gpu_on and where == "StatefulSet/eigenloop-daemon"
            assert has == want, f"{name}: {where}/{c['name']} nvidia.com/gpu present={has}, expected {want}"
            if has:
                assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"]
    daemon = r.get("StatefulSet", "eigenloop-daemon")["spec"]["template"]["spec"]
    tolerations = [t.get("key") for t in daemon.get("tolerations", [])]
    assert ("nvidia.com/gpu" in tolerations) == gpu_on
    assert ("nvidia.com/gpu.present" in daemon.get("nodeSelector", {})) == gpu_on
    image = daemon["containers"][0]["image"]
    assert image.endswith("-cuda" if gpu_on else "-cpu"), image
    if name == "gpu-on":
        assert daemon["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
        assert "dedicated" in tolerations, "daemon tolerations add to the GPU ones"


def test_security_context_and_resources(scenario):
    name, r = scenario
    for where, pod in r.pod_specs():
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0, where
        assert psc["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod["automountServiceAccountToken"] is False, where
        tmp = [v for v in pod["volumes"] if v["name"] == "tmp"]
        assert tmp and "emptyDir" in tmp[0], f"{where}: no emptyDir for /tmp"
        for c in containers(pod):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, f"{where}/{c['name']}"
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
            assert sc["runAsNonRoot"] is True
            assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), f"{where}/{c['name']}: /tmp"
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"].get(part, {})), f"{where}/{c['name']} {part}"


# Values that look like credentials: PEM blocks, cloud keys, bearer tokens, long random strings.
SECRET_PATTERNS = [
    re.compile(r"-----BEGIN [A-Z ]*(PRIVATE KEY|CERTIFICATE)-----"),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    re.compile(r"\b(eyJ[A-Za-z0-9_-]{10,}\.){2}"),
    re.compile(r"(?i)\b(password|passwd|secret|token|api_?key)\s*[:=]\s*['\"]?[^\s'\"{}]{4,}"),
]
SECRETISH_NAME = re.compile(r"(?i)(PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|PRIVATE_?KEY|CREDENTIAL)")


def _strings(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def test_no_inline_secrets(scenario):
    name, r = scenario
    for doc in r.all():
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        for path, value in _strings(doc):
            if ".annotations.checksum/" in path:
                continue  # a sha256 of the settings, not a credential
            for pat in SECRET_PATTERNS:
                assert not pat.search(value), f"{name}: {where}{path} looks like an inline secret: {value[:60]!r}"
            if re.fullmatch(r"[A-Za-z0-9+/=_-]{40,}", value):
                raise AssertionError(f"{name}: {where}{path} is a long random-looking string: {value[:20]}...")
    for where, pod in r.pod_specs():
        for c in containers(pod):
            for e in c.get("env", []):
                if SECRETISH_NAME.search(e["name"]):
                    assert "value" not in e, f"{where}/{c['name']}: {e['name']} has an inline value"
                    assert "secretKeyRef" in e["valueFrom"], f"{where}/{c['name']}: {e['name']} not from a Secret"


def test_secret_references_when_configured():
    r = render_files("live-trading-values.yaml")
    c = r.get("StatefulSet", "eigenloop-daemon")["spec"]["template"]["spec"]["containers"][0]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e}
    assert refs["EIGENLOOP_KAFKA__SASL_PASSWORD"] == {"name": "eigenloop-kafka", "key": "sasl-password"}
    assert refs["EIGENLOOP_ANALYTICS__PASSWORD"] == {"name": "eigenloop-clickhouse", "key": "password"}
    assert refs["EIGENLOOP_EXCHANGE_BINANCE_API_KEY"]["name"] == "eigenloop-exchange-keys"
    vols = {v["name"]: v for v in r.get("StatefulSet", "eigenloop-daemon")["spec"]["template"]["spec"]["volumes"]}
    assert vols["kafka-ca"]["secret"]["secretName"] == "eigenloop-kafka-ca"
    config = r.get("ConfigMap", "eigenloop")["data"]["config.yaml"]
    assert "ssl_cafile: /etc/eigenloop/kafka-ca/ca.crt" in config
    # workers get the Kafka and ClickHouse secrets but never the exchange keys
    for dep in ("eigenloop-streams", "eigenloop-sink"):
        names = {e["name"] for e in r.get("Deployment", dep)["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert "EIGENLOOP_KAFKA__SASL_PASSWORD" in names and not any("EXCHANGE" in n for n in names)


def test_live_trading_needs_both_locks():
    on = render_files("live-trading-values.yaml").get("StatefulSet", "eigenloop-daemon")
    off = render_files().get("StatefulSet", "eigenloop-daemon")
    c_on, c_off = (x["spec"]["template"]["spec"]["containers"][0] for x in (on, off))
    assert "--i-understand-live-trading" in c_on["args"]
    assert {"name": "EIGENLOOP_LIVE_TRADING", "value": "1"} in c_on["env"]
    assert "--i-understand-live-trading" not in c_off["args"]
    assert not any(e["name"] == "EIGENLOOP_LIVE_TRADING" for e in c_off["env"])
    with pytest.raises(Exception, match="exchangeCredentials.existingSecret"):
        render_values({"daemon": {"liveTrading": {"enabled": True}}})


def test_streams_worker_probes_use_its_health_pages(scenario):
    _, r = scenario
    deps = {d["metadata"]["name"] for d in r.kind("Deployment")}
    if "eigenloop-streams" not in deps:
        return  # the Flink scenario replaces the worker
    (c,) = r.get("Deployment", "eigenloop-streams")["spec"]["template"]["spec"]["containers"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "faust-web"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "faust-web"}
    assert "faust-web" in {p["name"] for p in c["ports"]}


def test_streams_replicas_never_exceed_partitions():
    assert render_values({"streams": {"replicas": 6}}).get("Deployment", "eigenloop-streams")["spec"]["replicas"] == 6
    with pytest.raises(Exception, match=r"streams.replicas=7 is more than the 6 partitions"):
        render_values({"streams": {"replicas": 7}})
    r = render_values({"streams": {"replicas": 7}, "topics": {"partitions": 12}})
    assert r.get("Deployment", "eigenloop-streams")["spec"]["replicas"] == 7
    init = r.get("Job", "eigenloop-migrations")["spec"]["template"]["spec"]["initContainers"][0]
    assert init["args"] == ["topics", "ensure", "--partitions", "12"]
    with pytest.raises(Exception, match=r"more than the 3 partitions"):
        render_values({"streams": {"replicas": 4}, "topics": {"partitions": 3}})


def test_hook_job_ensures_topics_then_migrates(scenario):
    _, r = scenario
    job = r.get("Job", "eigenloop-migrations")
    hooks = job["metadata"]["annotations"]["helm.sh/hook"].split(",")
    assert set(hooks) == {"pre-install", "pre-upgrade"}
    pod = job["spec"]["template"]["spec"]
    assert [c["args"][:2] for c in pod["initContainers"]] == [["topics", "ensure"]]
    assert pod["containers"][0]["args"] == ["analytics", "migrate"]
    # on a first install the release's ConfigMap and ServiceAccount do not exist yet when hooks run
    cm = r.get("ConfigMap", "eigenloop-hooks")
    sa = r.get("ServiceAccount", "eigenloop-hooks")
    for obj in (cm, sa):
        weight = int(obj["metadata"]["annotations"]["helm.sh/hook-weight"])
        assert weight < int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
    assert cm["data"] == r.get("ConfigMap", "eigenloop")["data"]
    assert pod["serviceAccountName"] == "eigenloop-hooks"


def test_config_checksum_rolls_pods():
    def checksums(r):
        return {w["metadata"]["name"]: w["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
                for w in r.workloads() if w["kind"] != "Job"}

    base = render_files()
    config = base.get("ConfigMap", "eigenloop")["data"]["config.yaml"]
    want = hashlib.sha256(config.rstrip("\n").encode()).hexdigest()
    assert set(checksums(base).values()) == {want}
    changed = checksums(render_values({"config": {"log_level": "debug"}}))
    assert set(changed) == set(checksums(base)) and all(changed[k] != want for k in changed)


def test_selectors_are_stable_labels(scenario):
    _, r = scenario
    for w in r.workloads():
        if w["kind"] == "Job":
            continue
        sel = w["spec"]["selector"]["matchLabels"]
        assert set(sel) == {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component"}
        assert sel.items() <= w["spec"]["template"]["metadata"]["labels"].items()


def test_network_policies(scenario):
    _, r = scenario
    base = r.get("NetworkPolicy", "eigenloop")
    assert base["spec"]["ingress"] == [] and set(base["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    ports = {p["port"] for rule in base["spec"]["egress"] for p in rule["ports"]}
    assert 53 in ports
    daemon = r.get("NetworkPolicy", "eigenloop-daemon")
    assert [p["port"] for p in daemon["spec"]["ingress"][0]["ports"]] == ["http"]
    assert daemon["spec"]["egress"][0]["ports"] == [{"port": 443, "protocol": "TCP"}]


def test_rbac_grants_nothing_by_default(scenario):
    _, r = scenario
    assert r.get("Role", "eigenloop")["rules"] == []
    rb = r.get("RoleBinding", "eigenloop")
    assert rb["subjects"] == [{"kind": "ServiceAccount", "name": "eigenloop", "namespace": "eigenloop"}]


def test_monitoring_objects():
    import promql_parser

    r = render_files("monitoring-values.yaml")
    sm = r.get("ServiceMonitor", "eigenloop-daemon")
    assert sm["spec"]["endpoints"][0]["port"] == "http" and sm["spec"]["endpoints"][0]["path"] == "/metrics"
    assert sm["spec"]["selector"]["matchLabels"].items() <= r.get("Service", "eigenloop-daemon")["metadata"]["labels"].items()
    (rule_obj,) = r.kind("PrometheusRule")
    rules = [x for g in rule_obj["spec"]["groups"] for x in g["rules"]]
    alerts = {x["alert"] for x in rules}
    assert {"EigenloopConsumerLag", "EigenloopKafkaUnavailable", "EigenloopDeadLetters", "EigenloopNoUpdates",
            "EigenloopGPUUnavailable", "EigenloopDaemonDown"} <= alerts
    for x in rules:
        promql_parser.parse(x["expr"])  # raises on a syntax error
        url = x["annotations"]["runbook_url"]
        assert url.endswith(f"/{x['alert']}.md"), url
        assert (REPO / "runbooks" / f"{x['alert']}.md").is_file(), f"no runbook for {x['alert']}"
        assert x["labels"]["severity"] in {"critical", "warning", "info"}
    no_gpu = render_values(load_values("monitoring-values.yaml", "gpu-off-values.yaml"))
    assert "EigenloopGPUUnavailable" not in {x["alert"] for g in no_gpu.kind("PrometheusRule")[0]["spec"]["groups"]
                                              for x in g["rules"]}
    assert not render_files().kind("ServiceMonitor") and not render_files().kind("PrometheusRule")


def test_additional_rules_are_appended():
    extra = {"alert": "PolicyCollapse", "expr": "eigenloop_guard_actions_total > 0", "for": "5m",
             "labels": {"severity": "warning"},
             "annotations": {"runbook_url": "https://example.org/runbooks/PolicyCollapse.md"}}
    r = render_values(load_values("monitoring-values.yaml",
                                  overrides={"monitoring": {"prometheusRule": {"additionalRules": [extra]}}}))
    rules = r.kind("PrometheusRule")[0]["spec"]["groups"][0]["rules"]
    assert rules[-1] == extra


def test_dashboard_queries_tables_the_migrations_create():
    import json

    from daemon.ops.analytics import migrations
    from daemon.ops.analytics.ddl import TABLES

    created = {t.name for t in TABLES}
    created |= set(re.findall(r"CREATE (?:TABLE|MATERIALIZED VIEW) IF NOT EXISTS \{db\}\.(\w+)",
                              open(migrations.__file__).read()))
    r = render_files("monitoring-values.yaml")
    dash = json.loads(r.get("ConfigMap", "eigenloop-dashboard")["data"]["eigenloop.json"])
    sqls = [t["rawSql"] for p in dash["panels"] for t in p["targets"]]
    assert sqls
    for sql in sqls:
        assert "${" not in sql, "placeholders must be filled when rendering"
        for table in re.findall(r"\beigenloop\.(\w+)", sql):
            assert table in created, f"dashboard queries eigenloop.{table}, which no migration creates"
    assert all(p["datasource"]["uid"] == "clickhouse-eigenloop" for p in dash["panels"])


def test_flink_values_render_a_flink_deployment_instead_of_the_worker():
    import kubernetes_validate

    report = lint(load_values("flink-values.yaml"))
    assert not [m for m in report["messages"] if m["severity"] >= 2] and not report["errors"], report
    r = render_files("flink-values.yaml")
    names = {(d["kind"], d["metadata"]["name"]) for d in r.all()}
    assert ("Deployment", "eigenloop-streams") not in names  # the Faust worker is replaced
    assert {p["metadata"]["name"] for p in r.kind("PodDisruptionBudget")} == {"eigenloop-daemon", "eigenloop-sink"}
    fd = r.get("FlinkDeployment", "eigenloop-streams")
    assert fd["apiVersion"] == "flink.apache.org/v1beta1"
    spec = fd["spec"]
    assert spec["image"] == "registry.example.com/eigenloop/eigenloop-flink:0.1.0" and spec["flinkVersion"] == "v2_2"
    conf = spec["flinkConfiguration"]
    assert conf["execution.checkpointing.dir"] == "s3://eigenloop-flink/checkpoints"
    assert conf["execution.checkpointing.mode"] == "EXACTLY_ONCE"
    # sub-second, as the local job's default: half an interval's pause between checkpoints
    assert conf["execution.checkpointing.interval"] == "500ms" and conf["execution.checkpointing.min-pause"] == "250ms"
    assert all(isinstance(v, str) for v in conf.values()), "flinkConfiguration values must be strings"
    job = spec["job"]
    assert job["entryClass"] == "org.apache.flink.client.python.PythonDriver" and job["parallelism"] == 4
    assert job["args"][job["args"].index("-pym") + 1] == "streams.flink_job" and "--managed" in job["args"]
    assert job["upgradeMode"] == "last-state" and job["state"] == "running"
    # the job reads the same settings file as every other component
    main = spec["podTemplate"]["spec"]["containers"][0]
    assert main["name"] == "flink-main-container"
    assert {"name": "EIGENLOOP_CONFIG", "value": "/etc/eigenloop/config.yaml"} in main["env"]
    assert spec["podTemplate"]["spec"]["volumes"][0]["configMap"]["name"] == "eigenloop"
    # and the pod template is a valid Pod spec, without the release's (deny-all) NetworkPolicy labels
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "t", **spec["podTemplate"]["metadata"]},
           "spec": {**spec["podTemplate"]["spec"], "containers": [{**main, "image": spec["image"]}]}}
    kubernetes_validate.validate(pod, KUBE_VERSIONS[-1], strict=True)
    assert spec["podTemplate"]["metadata"]["labels"]["app.kubernetes.io/name"] != "eigenloop"


def test_the_flink_checkpoint_interval_renders_in_milliseconds_within_its_bounds():
    r = render_values(load_values("flink-values.yaml", overrides={"flink": {"checkpointIntervalSeconds": 2.5}}))
    conf = r.get("FlinkDeployment", "eigenloop-streams")["spec"]["flinkConfiguration"]
    assert conf["execution.checkpointing.interval"] == "2500ms" and conf["execution.checkpointing.min-pause"] == "1250ms"
    for bad in (0.05, 301, "5s"):
        with pytest.raises(Exception, match="checkpointIntervalSeconds"):
            render_values(load_values("flink-values.yaml", overrides={"flink": {"checkpointIntervalSeconds": bad}}))


@pytest.mark.parametrize("missing,message", [("image", "needs flink.image"), ("checkpointDir", "needs flink.checkpointDir")])
def test_flink_needs_an_image_and_a_checkpoint_location(missing, message):
    with pytest.raises(Exception, match=message):
        render_values(load_values("flink-values.yaml", overrides={"flink": {missing: ""}}))


def test_chart_files_present():
    for f in ("Chart.yaml", "values.yaml", "values.schema.json", "templates/_helpers.tpl", ".helmignore"):
        assert (CHART / f).is_file(), f
    first = (CHART / "values.yaml").read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=values.schema.json"
