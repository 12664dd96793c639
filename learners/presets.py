"""Named learner configurations: the one the daemon and the efficacy benchmark share, and a
larger one for a GPU.

``cpu`` is ``LearnerConfig()``'s own defaults: the configuration the efficacy benchmark
(``eigenloop bench efficacy``) measures is the one ``eigenloop run`` uses, by construction. ``gpu``
changes only what a GPU can afford (width, depth, blocks, the learning rate that goes with them)
and keeps the sampler, the likelihood and the regulariser, so the learning dynamics measured on
the CPU carry over. ``auto`` picks ``gpu`` when CUDA is available.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {},
    # the cpu's lr (5e-5) too: the weak-vote argument that set it is about the data, not the model
    "gpu": {"model": {"n_blocks": 4, "n_layer": 4, "n_embd": 256, "n_head": 4}},
}


def resolve_preset(name: str) -> str:
    """``auto`` -> ``gpu`` when CUDA is available, else ``cpu``; other names are checked."""
    if name == "auto":
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    if name not in PRESETS:
        raise ValueError(f"learner preset {name!r} is unknown; use one of {sorted(PRESETS)} or 'auto'")
    return name


def preset_kwargs(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """``LearnerConfig`` kwargs: the preset, then ``overrides`` on top (``model`` merged key by key)."""
    base = {k: (dict(v) if isinstance(v, dict) else v) for k, v in PRESETS[resolve_preset(name)].items()}
    for key, value in (overrides or {}).items():
        if key == "model" and isinstance(value, dict) and isinstance(base.get("model"), dict):
            base["model"] = {**base["model"], **value}
        else:
            base[key] = value
    return base
