"""Topic names: one resolver from catalogue name and prefix to the physical name, for everyone."""

from __future__ import annotations

import pytest

from daemon.eventlog.connection import physical, topic
from schemas.settings import KafkaSettings, Settings
from schemas.topics import BY_NAME, catalogue, physical_name, topic_name
from streams.flink_job import INPUTS, OUTPUTS, from_settings


def test_catalogue_names_take_the_prefix_and_unknown_ones_are_refused():
    assert topic_name("learn.groups") == "learn.groups"
    assert topic_name("learn.groups", "shadow.") == "shadow.learn.groups"
    with pytest.raises(KeyError, match="learn.group'"):
        topic_name("learn.group", "shadow.")  # a typo would otherwise create a topic nobody reads


def test_other_names_pass_through_unchanged():
    assert physical_name("agent.actions", "p.") == "p.agent.actions"
    assert physical_name("my-own-topic", "p.") == "my-own-topic"


def test_every_user_of_a_prefix_resolves_alike(tmp_path):
    settings = Settings(data_dir=tmp_path, kafka=KafkaSettings(topic_prefix="t1."))
    specs = {t.name: t for t in catalogue("t1.")}
    for base in BY_NAME:
        name = topic_name(base, "t1.")
        assert topic(settings, base) == physical(settings, base) == name and name in specs
    assert specs["t1.market.events"].dead_letter == "t1.deadletter"
    job = from_settings(settings, "127.0.0.1:9092")
    assert job.topics == {b: topic_name(b, "t1.") for b in INPUTS + OUTPUTS}
