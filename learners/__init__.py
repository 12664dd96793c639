"""The learner: a block-local (no-prop) masked-diffusion LM with continuous block-local GRPO.

torch only; never imports Kafka, Faust, ccxt, ``daemon`` or ``streams``. Public API:

- ``LearnerConfig``, ``build_state(config)``, ``step(state, group) -> (state, [BlockUpdate])``,
  ``sample(state, prompt, n=, seed=, temperature=, top_p=)``, ``block_checksum(model, b)``
- ``save_snapshot(state, dir, extra_metadata)``, ``load_snapshot(dir, device)``,
  ``pin_blocks(state, snapshot_dir, blocks)``, ``read_snapshot_info(dir)``
- ``parse_action(text, task)``, ``format_market_prompt(symbol, features)``,
  ``format_social_prompt(posts, horizon_s)``, ``Invalid``
- ``ensure_initial_snapshot(path, config)``, ``bootstrapped_state(config)``
- ``export_hf(model, dir)`` and ``hf_adapter.DiffusionLMAdapter``
"""

from learners.bootstrap import bootstrapped_state, ensure_initial_snapshot, parse_rate
from learners.core import LearnerConfig, LearnerState, block_checksum, build_state, reset_reference, sample, step
from learners.grammar import Invalid, format_market_prompt, format_social_prompt, parse_action
from learners.model import BlockDiffusionLM, ModelConfig
from learners.snapshot import load_snapshot, pin_blocks, read_snapshot_info, save_snapshot
from learners.tokenizer import ByteTokenizer

__all__ = [
    "BlockDiffusionLM", "ByteTokenizer", "Invalid", "LearnerConfig", "LearnerState", "ModelConfig",
    "block_checksum", "bootstrapped_state", "build_state", "ensure_initial_snapshot", "format_market_prompt",
    "format_social_prompt", "load_snapshot", "parse_action", "parse_rate", "pin_blocks", "read_snapshot_info",
    "reset_reference", "sample", "save_snapshot", "step",
]
