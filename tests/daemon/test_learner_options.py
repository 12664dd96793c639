"""A bad learner option fails at start with one readable line, before the broker, the children
or the model: the settings file only carries ``learner.config`` through, and ``LearnerConfig``
judges it (``daemon.service.learner_settings``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from daemon.cli import app
from daemon.cli.run import check_learner_options
from daemon.errors import ConfigError
from daemon.service.learner_settings import learner_config, learner_config_problem
from schemas.settings import LearnerSettings, Settings

UNKNOWN_SELECTION = "learner.config: block_selection='top' is unknown; use one of ['all', 'round_robin', 'topk_loss']"


def _settings(tmp_path: Path, **config) -> Settings:
    return Settings(data_dir=tmp_path / "data", learner=LearnerSettings(device="cpu", config=config))


@pytest.mark.parametrize(("config", "message"), [
    ({"block_selection": "top"}, UNKNOWN_SELECTION),
    ({"blok_selection": "all"}, "unexpected keyword argument 'blok_selection'"),
    ({"blocks_per_group": 9}, "learner.config: blocks_per_group=9 must be in [1, n_blocks=2]"),
    ({"model": {"n_layers": 3}}, "unexpected keyword argument 'n_layers'"),
])
def test_a_bad_learner_option_is_a_config_error_naming_it(tmp_path: Path, config: dict, message: str):
    s = _settings(tmp_path, **config)
    with pytest.raises(ConfigError) as e:
        learner_config(s)
    assert message in str(e.value) and str(e.value).startswith("learner.config: ")
    assert "\n" not in str(e.value)
    assert learner_config_problem(s) == str(e.value)
    assert learner_config_problem(_settings(tmp_path)) is None


def test_the_daemon_start_refuses_it_before_loading_the_model(tmp_path: Path):
    from daemon.service.runtime import Daemon

    daemon = Daemon(_settings(tmp_path, block_selection="top"))
    with pytest.raises(ConfigError, match="block_selection='top' is unknown"):
        asyncio.run(daemon.start())
    assert not (tmp_path / "data").exists()  # no snapshot bootstrapped, nothing written


def test_the_run_supervisor_refuses_it_before_anything_starts(tmp_path: Path):
    # the check runs in a child process, so the supervisor never imports torch
    with pytest.raises(ConfigError, match=r"^learner\.config: block_selection='top' is unknown"):
        check_learner_options(_settings(tmp_path, block_selection="top"))
    check_learner_options(_settings(tmp_path))


def test_learner_bootstrap_refuses_it_in_one_line(tmp_path: Path):
    data = tmp_path / "data"
    config = tmp_path / "eigenloop.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(data), "learner": {"config": {"block_selection": "top"}}}))
    result = CliRunner().invoke(app, ["--config", str(config), "learner", "bootstrap"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"error: {UNKNOWN_SELECTION}"
    assert not data.exists()  # no model was bootstrapped
