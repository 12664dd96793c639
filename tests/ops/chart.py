"""Render and lint the Helm chart offline, with the Helm SDK (no helm binary, no cluster).

``helm-python-sdk`` binds Helm's own Go SDK (v4) through a bundled shared library, so rendering,
schema validation and lint are exactly Helm's. Also usable by hand::

    .venv/bin/python -m tests.ops.chart [VALUES.yaml ...]          # print the manifests
    .venv/bin/python -m tests.ops.chart --lint [VALUES.yaml ...]   # lint findings
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "eigenloop"
CI_VALUES = CHART / "ci"
RELEASE = "eigenloop"
NAMESPACE = "eigenloop"


def _merge(dst: dict[str, Any], src: dict[str, Any]) -> dict[str, Any]:
    """Deep merge like Helm's -f a.yaml -f b.yaml: later files win, maps merge, lists replace."""
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = v
    return dst


def load_values(*files: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for f in files:
        path = Path(f)
        if not path.is_absolute() and not path.exists():
            path = CI_VALUES / path
        values = _merge(values, yaml.safe_load(path.read_text()) or {})
    return _merge(values, json.loads(json.dumps(overrides or {})))


@dataclass
class Rendered:
    """The manifests of one render: parsed documents with the template each came from."""

    docs: list[tuple[str, dict[str, Any]]]
    notes: str

    def all(self) -> list[dict[str, Any]]:
        return [d for _, d in self.docs]

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for _, d in self.docs if d.get("kind") == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [d for d in self.kind(kind) if d["metadata"]["name"] == name]
        if len(found) != 1:
            names = [d["metadata"]["name"] for d in self.kind(kind)]
            raise KeyError(f"{kind}/{name}: found {len(found)}; the render has {kind} {names}")
        return found[0]

    def workloads(self) -> list[dict[str, Any]]:
        return [d for d in self.all() if d.get("kind") in ("StatefulSet", "Deployment", "Job", "DaemonSet")]

    def pod_specs(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for w in self.workloads():
            yield f"{w['kind']}/{w['metadata']['name']}", w["spec"]["template"]["spec"]


def _chart():
    import helm_python as helm

    return helm.Chart.load(str(CHART))


def render_values(values: dict[str, Any]) -> Rendered:
    """Render with these values (the chart's defaults underneath), as `helm template` would."""
    with _chart() as chart:
        raw = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs: list[tuple[str, dict[str, Any]]] = []
    notes = ""
    for template, text in sorted(raw.items()):
        if template.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append((template, doc))
    return Rendered(docs, notes)


@functools.lru_cache(maxsize=None)
def render_files(*files: str) -> Rendered:
    """Render with ci/ values files (cached: several tests look at the same render)."""
    return render_values(load_values(*files))


def lint(values: dict[str, Any]) -> dict[str, Any]:
    import helm_python as helm

    return helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE)


def validate_schema(values: dict[str, Any]) -> None:
    with _chart() as chart:
        chart.validate_schema(values)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--lint"]:
        print(json.dumps(lint(load_values(*args[1:])), indent=2))
    else:
        with _chart() as chart:
            out = chart.render(load_values(*args), name=RELEASE, namespace=NAMESPACE, is_install=True)
        for template, text in sorted(out.items()):
            if text.strip() and not template.endswith("NOTES.txt"):
                print(f"---\n# Source: {template}\n{text.strip()}")
