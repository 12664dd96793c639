"""The learner's config from the settings, and its check at start.

Kept apart from ``daemon.service.runtime`` (which imports torch and the whole daemon) so that a process
with no use for torch, ``eigenloop run``'s supervisor, can name the check for a child to run.
"""

from __future__ import annotations

from daemon.errors import ConfigError
from schemas.settings import Settings


def learner_config(settings: Settings):
    """The learner's config: the preset, ``learner.config`` on top, then ``learner.device``.

    Raises ``ConfigError`` (one line, naming ``learner.config``) for an option ``LearnerConfig``
    does not know or refuses. Every command that runs the learner calls this first, before the
    broker, the children or the model: the settings file cannot check these options itself
    (``schemas`` may not import ``learners``, and copying the rules there would let them drift),
    and checking them in every command's settings load would make each one, the kill switch
    included, pay for importing torch.
    """
    from learners.config import LearnerConfig
    from learners.presets import preset_kwargs

    preset = settings.learner.preset
    if preset == "auto" and settings.learner.device == "cpu":
        preset = "cpu"  # a CPU-pinned daemon never takes the gpu preset, CUDA present or not
    cfg = preset_kwargs(preset, dict(settings.learner.config))
    if settings.learner.device != "auto":
        cfg["device"] = settings.learner.device
    try:
        return LearnerConfig(**cfg)
    except (TypeError, ValueError) as e:  # TypeError: an unknown option (a keyword LearnerConfig lacks)
        raise ConfigError(f"learner.config: {e}") from None


def learner_config_problem(settings: Settings) -> str | None:
    """``learner_config``'s error for these settings, or None: for a process that asks a child
    (``eigenloop run``'s supervisor, which has no use for torch)."""
    try:
        learner_config(settings)
    except ConfigError as e:
        return str(e)
    return None
