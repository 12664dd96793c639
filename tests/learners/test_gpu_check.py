"""benchmarks/gpu_check.sh, the one script a lent GPU runs, works end to end (``--dry-run`` on the CPU)."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run_prints_every_figure():
    env = {k: v for k, v in os.environ.items() if not k.startswith("EIGENLOOP_")}
    env["PYTHON"] = sys.executable
    out = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    for figure in ("learners import cleanly", "preset cpu on cpu", "ratio block-local/e2e: params",
                   "group->weights latency p50=", "ratio block-local/e2e bits/char", "gpu_check: done"):
        assert figure in text, (figure, text[-4000:])
