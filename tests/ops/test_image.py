"""The Dockerfile (Docker does not run here, so it is checked by reading) agrees with the chart:
same user, same variants, same entrypoint, same version; and the build context stays small."""

from __future__ import annotations

import re
import tomllib

import yaml

from tests.ops.chart import CHART, REPO, render_files

DOCKERFILE = (REPO / "Dockerfile").read_text()


def test_multi_stage_with_variant_arg():
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\w+)", DOCKERFILE, flags=re.M)
    assert stages == ["build", "runtime"]
    assert re.search(r"^ARG VARIANT=cpu$", DOCKERFILE, flags=re.M)
    assert "cpu)" in DOCKERFILE and "cuda)" in DOCKERFILE, "both variants are handled"
    assert "COPY --from=build /opt/venv /opt/venv" in DOCKERFILE, "the runtime gets the venv only"
    runtime = DOCKERFILE.split("AS runtime", 1)[1]
    assert "build-essential" not in runtime, "no compilers in the runtime image"


def test_non_root_user_matches_chart():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    uid = values["securityContext"]["runAsUser"]
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILE, flags=re.M)
    assert users and users[-1] == f"{uid}:{values['securityContext']['runAsGroup']}"
    assert f"--uid {uid}" in DOCKERFILE


def test_entrypoint_and_port_match_chart():
    assert re.search(r'^ENTRYPOINT \["eigenloop"\]$', DOCKERFILE, flags=re.M)
    r = render_files()
    c = r.get("StatefulSet", "eigenloop-daemon")["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["eigenloop"]
    assert re.search(rf"^EXPOSE {c['ports'][0]['containerPort']}$", DOCKERFILE, flags=re.M)
    assert re.search(r"EIGENLOOP_DATA_DIR=/var/lib/eigenloop", DOCKERFILE)


def test_versions_agree():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == project["version"], "Chart.yaml appVersion must follow pyproject's version"
    image = render_files().get("Deployment", "eigenloop-sink")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"eigenloop/eigenloop:{project['version']}-cuda"


def test_copies_every_package_and_dockerignore_allows_them():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert [ln for ln in ignore if ln and not ln.startswith("#")][0] == "*", "allow-list: ignore all, then allow"
    for pkg in packages:
        assert re.search(rf"^COPY {pkg} \./{pkg}$", DOCKERFILE, flags=re.M), f"Dockerfile does not copy {pkg}/"
        assert f"!{pkg}/" in ignore, f".dockerignore excludes {pkg}/"
    for f in ("pyproject.toml", "README.md"):
        assert f"!{f}" in ignore
