"""values.schema.json: strict everywhere, rejects bad values with a message naming the key, stays in
step with the settings model, and the rendered settings file loads with the real loader."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.ops import config_schema
from tests.ops.chart import CHART, load_values, render_files, render_values, validate_schema

SCHEMA = json.loads((CHART / "values.schema.json").read_text())


# (values, what the error must mention)
BAD_VALUES = [
    ({"streams": {"replicas": -1}}, "/streams/replicas"),
    ({"sink": {"replicas": 1.5}}, "/sink/replicas"),
    ({"bogus": True}, "'bogus' not allowed"),
    ({"daemon": {"probes": {"liveness": {"periodSeconds": 5, "failureThreshold": 3, "initialDelay": 1}}}},
     "'initialDelay' not allowed"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"image": {"variant": "rocm"}}, "/image/variant"),
    ({"gpu": {"enabled": "yes"}}, "/gpu/enabled"),
    ({"gpu": {"count": 0}}, "/gpu/count"),
    ({"kafka": {"bootstrap": "no-port"}}, "/kafka/bootstrap"),
    ({"kafka": {"securityProtocol": "TLS"}}, "/kafka/securityProtocol"),
    ({"kafka": {"sasl": {"password": "hunter2"}}}, "'password' not allowed"),
    ({"clickhouse": {"url": "ftp://ch:21"}}, "/clickhouse/url"),
    ({"clickhouse": {"password": "hunter2"}}, "'password' not allowed"),
    ({"daemon": {"terminationGracePeriodSeconds": 5}}, "/daemon/terminationGracePeriodSeconds"),
    ({"daemon": {"replicas": 2}}, "'replicas' not allowed"),
    ({"daemon": {"resources": {"limits": None}}}, "/daemon/resources"),  # null deletes the default
    ({"daemon": {"resources": {"requests": {"cpu": "lots", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}}},
     "/daemon/resources/requests/cpu"),
    ({"daemon": {"extraEnv": [{"name": "EIGENLOOP_ANALYTICS__PASSWORD", "value": "hunter2"}]}}, "/daemon/extraEnv/0"),
    ({"streams": {"extraEnv": [{"name": "BINANCE_API_KEY", "value": "abc"}]}}, "/streams/extraEnv/0"),
    ({"topics": {"partitions": -3}}, "/topics/partitions"),
    ({"service": {"type": "ExternalName"}}, "/service/type"),
    ({"monitoring": {"prometheusRule": {"additionalRules": [{"alert": "X", "expr": "up == 0", "annotations": {}}]}}},
     "runbook_url"),
    # the settings file: unknown keys, bad enums, and every chart-managed or secret key
    ({"config": {"learner": {"device": "tpu"}}}, "/config/learner/device"),
    ({"config": {"groups": {"group_size": 1}}}, "/config/groups/group_size"),
    ({"config": {"nonsense": 1}}, "'nonsense' not allowed"),
    ({"config": {"kafka": {"sasl_password": "hunter2"}}}, "'sasl_password' not allowed"),
    ({"config": {"analytics": {"password": "hunter2"}}}, "'password' not allowed"),
    ({"config": {"kafka": {"bootstrap": "x:1"}}}, "'bootstrap' not allowed"),
    ({"config": {"live_trading": True}}, "'live_trading' not allowed"),
    ({"config": {"http": {"port": 1}}}, "'http' not allowed"),
]


@pytest.mark.parametrize("values,mentions", BAD_VALUES, ids=[m for _, m in BAD_VALUES])
def test_schema_rejects(values, mentions):
    with pytest.raises(Exception) as err:
        validate_schema(values)
    assert mentions in str(err.value), str(err.value)
    with pytest.raises(Exception):  # and so does an install (render validates first)
        render_values(values)


@pytest.mark.parametrize("name", ["gpu-off-values.yaml", "gpu-on-values.yaml", "live-trading-values.yaml",
                                  "monitoring-values.yaml", "flink-values.yaml"])
def test_schema_accepts_ci_values(name):
    validate_schema(load_values(name))


def _objects(node, path="$"):
    if isinstance(node, dict):
        if node.get("type") == "object" or "properties" in node:
            yield path, node
        for k, v in node.items():
            yield from _objects(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _objects(v, f"{path}[{i}]")


# Objects left open on purpose: Kubernetes objects passed through to the API server (which
# validates them), and the learner's own config (validated by learners.LearnerConfig).
PASS_THROUGH = "(a Kubernetes object, passed through as is)"


def test_schema_is_strict_throughout():
    assert SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"
    loose = []
    for path, node in _objects(SCHEMA):
        if "additionalProperties" in node:
            continue  # false, or a typed map like {"type": "string"}
        if PASS_THROUGH in node.get("description", "") or path.endswith("properties.learner.properties.config"):
            continue
        if path.startswith("$.definitions.envVar.if") or path.startswith("$.definitions.envVar.then"):
            continue
        loose.append(path)
    assert not loose, f"objects without additionalProperties: {loose}"
    assert SCHEMA["properties"]["image"]["properties"]["pullPolicy"]["enum"] == ["Always", "IfNotPresent", "Never"]


def test_every_key_is_described():
    missing = []

    def walk(node, path):
        for name, child in node.get("properties", {}).items():
            if "description" not in child and "$ref" not in child:
                missing.append(f"{path}.{name}")
            walk(child, f"{path}.{name}")

    walk(SCHEMA, "$")
    assert not missing, missing


def test_values_yaml_keys_match_schema_and_are_commented():
    """values.yaml sets every schema key, and each chart key (two levels deep, outside the
    free-form settings under config) has a comment right above it."""
    import re

    text = (CHART / "values.yaml").read_text().splitlines()
    values = yaml.safe_load("\n".join(text))
    assert set(values) == set(SCHEMA["properties"]) == set(SCHEMA["required"])
    stack: list[str] = []
    uncommented = []
    for i, line in enumerate(text):
        m = re.match(r"^( *)([A-Za-z_][\w./-]*):(\s|$)", line)
        if not m:
            continue
        depth = len(m.group(1)) // 2
        stack[depth:] = [m.group(2)]
        if stack[0] == "config" and depth > 0 or depth > 1:
            continue
        node = SCHEMA
        for key in stack:
            node = node.get("properties", {}).get(key)
            if node is None:
                break
            node = SCHEMA["definitions"][node["$ref"].split("/")[-1]] if "$ref" in node else node
        if node is None:
            continue  # an entry of a free-form map (labels, nodeSelector)
        if not text[i - 1].lstrip().startswith("#"):
            uncommented.append(".".join(stack))
    assert not uncommented, f"values.yaml keys without a comment above: {uncommented}"


def test_config_schema_matches_settings_model():
    committed = SCHEMA["properties"]["config"]
    fresh = config_schema.config_schema()
    assert committed == fresh, ("the chart's config schema is out of date with schemas/settings.py; run "
                                "`.venv/bin/python -m tests.ops.config_schema --write` and commit helm/eigenloop/values.schema.json")


@pytest.mark.parametrize("files", [(), ("live-trading-values.yaml",), ("gpu-off-values.yaml",)],
                         ids=["default", "live-trading", "gpu-off"])
def test_rendered_settings_load(files, monkeypatch, tmp_path):
    """The ConfigMap plus the daemon's environment is a valid settings file for the real loader."""
    from schemas.settings import load_settings

    r = render_files(*files)
    path = tmp_path / "config.yaml"
    path.write_text(r.get("ConfigMap", "eigenloop")["data"]["config.yaml"])
    container = r.get("StatefulSet", "eigenloop-daemon")["spec"]["template"]["spec"]["containers"][0]
    import os

    for name in list(os.environ):
        if name.startswith("EIGENLOOP_"):
            monkeypatch.delenv(name)
    for e in container["env"]:
        if e["name"] == "EIGENLOOP_CONFIG":
            continue
        # a Secret's value stands in for each secretKeyRef, as the kubelet would inject it
        monkeypatch.setenv(e["name"], e.get("value", f"from-secret-{e['name'].lower()}"))
    s = load_settings(path)
    values = load_values(*files)
    live = values.get("daemon", {}).get("liveTrading", {}).get("enabled", False)
    assert s.live_trading is live and s.executor.mode == ("live" if live else "paper")
    assert s.kafka.bootstrap == (values.get("kafka", {}).get("bootstrap") or "kafka-bootstrap.kafka.svc:9092")
    assert s.http.host == "0.0.0.0" and s.http.port == 8787
    assert str(s.data_dir) == "/var/lib/eigenloop"
    assert str(s.executor.kill_switch_file).startswith("/var/lib/eigenloop/"), "the kill switch must survive restarts"
    assert s.analytics.dsn.endswith("/eigenloop")
    if live:
        assert s.kafka.sasl_password.get_secret_value() == "from-secret-eigenloop_kafka__sasl_password"
        assert s.analytics.password.get_secret_value() == "from-secret-eigenloop_analytics__password"
        assert s.kafka.ssl_cafile == "/etc/eigenloop/kafka-ca/ca.crt"
