"""One learner configuration: what `eigenloop run` uses on a CPU is what the efficacy benchmark measures."""

from dataclasses import asdict

import pytest

from learners.core import LearnerConfig
from learners.presets import PRESETS, preset_kwargs, resolve_preset


def test_gpu_preset_merges_model_sizes_and_keeps_the_dynamics():
    gpu = LearnerConfig(**preset_kwargs("gpu", {"model": {"n_layer": 6}, "lr": 3e-5}))
    cpu = LearnerConfig()
    assert gpu.model.n_embd == PRESETS["gpu"]["model"]["n_embd"] and gpu.model.n_layer == 6 and gpu.lr == 3e-5
    for same in ("likelihood", "mirror", "constrain", "gen_len", "sample_steps", "reveal_window", "betas",
                 "kl_bootstrap_coef"):
        assert getattr(gpu, same) == getattr(cpu, same), same


def test_unknown_preset_is_refused_by_name():
    with pytest.raises(ValueError, match="'tpu' is unknown"):
        resolve_preset("tpu")


def test_the_daemons_cpu_learner_is_the_efficacy_benchmarks():
    from daemon.service.learner_settings import learner_config
    from daemon.tools.efficacy.config import EfficacyConfig
    from schemas.settings import LearnerSettings, Settings

    daemon = asdict(learner_config(Settings(learner=LearnerSettings(device="cpu"))))
    bench = asdict(LearnerConfig(**EfficacyConfig().learner_dict()))
    assert daemon == bench
    assert daemon["likelihood"] == "trajectory" and daemon["mirror"] is True
