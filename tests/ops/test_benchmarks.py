"""Every benchmark the README lists starts as written, and the Kafka benchmarks read their broker
the way every eigenloop command does (``benchmarks/bench_kafka.py``). No long benchmark runs
here: each is started with ``--help`` after the README's arguments; only the replay benchmark
runs for real, on 50 groups, so that it is seen to find the broker EIGENLOOP_KAFKA__BOOTSTRAP
names rather than fail with "no Kafka broker configured"."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Each script as `python benchmarks/x.py` runs it: a fresh interpreter per script, the script's
# folder first on sys.path, no PYTHONPATH. `--help` exits 0 once the imports and the argument
# parser are in place, before any work.
STARTS = """
import runpy, sys
script, *args = sys.argv[1:]
sys.argv = [script, *args, "--help"]
sys.path[0] = script.rsplit("/", 1)[0]
try:
    runpy.run_path(script, run_name="__main__")
except SystemExit as e:
    sys.exit(e.code)
sys.exit("no --help exit")
"""


def readme_benchmarks() -> list[tuple[str, list[str]]]:
    """(script path, arguments) of each command in the README's Benchmarks block; ``make`` targets
    resolved through their recipe in mk/*.mk."""
    text = (REPO / "README.md").read_text()
    block = text.split("## Benchmarks", 1)[1].split("```", 2)[1]
    out = []
    for line in block.splitlines():
        cmd = line.split("#", 1)[0].split()
        if not cmd:
            continue
        if cmd[0] == "make":
            recipes = "".join(p.read_text() for p in (REPO / "mk").glob("*.mk"))
            recipe = re.search(rf"^{re.escape(cmd[1])}:.*\n\t(.+)$", recipes, re.M)
            assert recipe, f"README lists `make {cmd[1]}` but no mk/*.mk defines it"
            cmd = recipe.group(1).split()
        script = next(a for a in cmd if a.startswith("benchmarks/"))
        out.append((script, cmd[cmd.index(script) + 1:]))
    return out


def _bare_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EIGENLOOP_") and k != "PYTHONPATH"}
    env.update(extra)
    return env


def test_the_readme_lists_the_benchmarks():
    scripts = {s for s, _ in readme_benchmarks()}
    assert "benchmarks/replay_throughput.py" in scripts and "benchmarks/flink_vs_faust.py" in scripts
    assert all((REPO / s).is_file() for s in scripts), scripts


@pytest.mark.parametrize("script,args", readme_benchmarks(), ids=lambda v: v if isinstance(v, str) else "")
def test_a_readme_benchmark_starts_as_written(script: str, args: list[str], tmp_path: Path):
    run = subprocess.run([sys.executable, "-c", STARTS, str(REPO / script), *args], cwd=tmp_path, env=_bare_env(),
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "usage" in (run.stdout + run.stderr).lower()


def test_benchmark_settings_come_from_the_environment_like_every_command(monkeypatch, tmp_path: Path):
    monkeypatch.syspath_prepend(str(REPO))
    from benchmarks.bench_kafka import bench_settings

    for name in [k for k in os.environ if k.startswith("EIGENLOOP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("EIGENLOOP_KAFKA__BOOTSTRAP", "127.0.0.1:9")  # nothing listens: nothing connects
    monkeypatch.setenv("EIGENLOOP_KAFKA__LINGER_MS", "17")
    with bench_settings("bench", data_dir=tmp_path / "bench") as s:
        assert s.kafka.bootstrap == "127.0.0.1:9" and s.kafka.linger_ms == 17
        assert s.kafka.topic_prefix.startswith("bench") and s.kafka.topic_prefix.endswith(".")
        assert s.data_dir == tmp_path / "bench"
    assert not (tmp_path / "bench").exists()  # no throwaway broker was started


@pytest.mark.kafka
def test_the_replay_benchmark_runs_with_the_broker_from_the_environment(kafka_bootstrap: str, tmp_path: Path):
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "replay_throughput.py"), "--groups", "50",
                          "--model-groups", "2", "--data-dir", str(tmp_path / "bench")], cwd=tmp_path,
                         env=_bare_env(EIGENLOOP_KAFKA__BOOTSTRAP=kafka_bootstrap), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout[run.stdout.index("{"):])
    assert out["bookkeeping"]["groups"] == 50 and out["bookkeeping"]["verified_updates"] == 150
