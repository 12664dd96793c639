"""Learning efficacy on recorded markets; the same command as ``eigenloop bench efficacy``.

    .venv/bin/python benchmarks/efficacy.py --out out/efficacy            # full run, seeds 0,1,2
    .venv/bin/python benchmarks/efficacy.py --seeds 0,1,2,3 --jobs 2      # one learner per (fee, seed)
    .venv/bin/python benchmarks/efficacy.py --quick --out out/efficacy-q  # wiring check
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import typer  # noqa: E402

from daemon.cli.bench import efficacy  # noqa: E402

if __name__ == "__main__":
    typer.run(efficacy)
