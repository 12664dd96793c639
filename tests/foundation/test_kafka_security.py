"""``schemas.kafka_security``: the one mapping of ``kafka.*`` security for every client.
No secured broker runs here; these check what each client is told."""

from __future__ import annotations

import ssl

import pytest

from daemon.eventlog.connection import security_kwargs
from schemas.kafka_security import aiokafka_kwargs, java_properties, librdkafka_config
from schemas.settings import KafkaSettings, Settings
from streams.flink_lag import librdkafka_config as flink_lag_config

SCRAM = KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="u",
                      sasl_password="pw", ssl_cafile="/ca.pem")


def test_plaintext_is_just_the_protocol():
    k = KafkaSettings()
    assert aiokafka_kwargs(k) == {"security_protocol": "PLAINTEXT"}
    assert java_properties(k) == {"security.protocol": "PLAINTEXT"}
    assert librdkafka_config(k) == {"security.protocol": "plaintext"}


def test_sasl_ssl_for_aiokafka_and_the_daemon_clients():
    kw = aiokafka_kwargs(KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="PLAIN",
                                       sasl_username="u", sasl_password="pw"))
    assert (kw["sasl_mechanism"], kw["sasl_plain_username"], kw["sasl_plain_password"]) == ("PLAIN", "u", "pw")
    assert isinstance(kw["ssl_context"], ssl.SSLContext)
    # the daemon's clients get exactly this mapping
    assert security_kwargs(Settings(kafka=KafkaSettings())) == {"security_protocol": "PLAINTEXT"}


def test_sasl_without_a_user_is_refused_in_the_settings_words():
    for render in (aiokafka_kwargs, java_properties, librdkafka_config):
        with pytest.raises(ValueError, match="needs kafka.sasl_mechanism and kafka.sasl_username"):
            render(KafkaSettings(security_protocol="SASL_PLAINTEXT"))


def test_jaas_values_are_quoted():
    props = java_properties(KafkaSettings(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
                                          sasl_username="u", sasl_password='p"w\\'))
    assert props["sasl.jaas.config"].endswith('username="u" password="p\\"w\\\\";')
    assert props["sasl.jaas.config"].startswith(
        "org.apache.flink.kafka.shaded.org.apache.kafka.common.security.plain.PlainLoginModule required ")


def test_the_flink_job_uses_this_mapping():
    from streams.flink_job import from_settings

    cfg = from_settings(Settings(kafka=SCRAM), "b:9092")
    assert cfg.kafka_properties == java_properties(SCRAM)
    lag = flink_lag_config("b:9092", "g", SCRAM)
    assert lag == {"bootstrap.servers": "b:9092", "group.id": "g", "enable.auto.commit": "false",
                   **librdkafka_config(SCRAM)}
