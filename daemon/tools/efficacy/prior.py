"""The benchmark's initial policy: the daemon's own trading prior (``learners.grammar``).

Kept as a module so the benchmark's names stay stable; the text itself is defined once, in the
grammar, and ``eigenloop run`` bootstraps on the same one (``learners.bootstrap``).
"""

from __future__ import annotations

from learners.grammar import PRIOR_ACTIONS as DEFAULT_ACTIONS
from learners.grammar import prior_pairs as pairs_for
from learners.grammar import prior_parse_prompts as parse_prompts

__all__ = ["DEFAULT_ACTIONS", "pairs_for", "parse_prompts"]
