"""Learning efficacy on recorded markets: the live loop, broker-free, over captures.

``run_efficacy(EfficacyConfig(...), out_dir)`` is what ``eigenloop bench efficacy`` and
``benchmarks/efficacy.py`` call. See ``driver`` for which live functions it runs and in what order.
"""

from daemon.tools.efficacy.bench import run_efficacy, run_fee
from daemon.tools.efficacy.config import EfficacyConfig

__all__ = ["EfficacyConfig", "run_efficacy", "run_fee"]
