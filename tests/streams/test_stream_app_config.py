"""The worker's Kafka security settings reach Faust (no secured broker can run here, so this
checks what Faust hands to aiokafka)."""

from __future__ import annotations

import ssl

import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from schemas.settings import KafkaSettings, Settings
from streams.app import faust_credentials


def _settings(**kafka) -> Settings:
    return Settings(kafka=KafkaSettings(bootstrap="b:9092", **kafka))


def test_plaintext_needs_no_credentials():
    assert faust_credentials(_settings()) is None


def test_sasl_ssl_scram_reaches_aiokafka_with_the_secret():
    creds = faust_credentials(_settings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                                        sasl_username="eigen", sasl_password="s3cret"))
    auth = credentials_to_aiokafka_auth(creds)
    assert auth["security_protocol"] == "SASL_SSL" and auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("eigen", "s3cret")
    assert isinstance(auth["ssl_context"], ssl.SSLContext)
    assert "s3cret" not in repr(creds)


def test_sasl_plaintext_and_ssl_only():
    auth = credentials_to_aiokafka_auth(faust_credentials(_settings(
        security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="u", sasl_password="p")))
    assert auth["security_protocol"] == "SASL_PLAINTEXT" and auth["ssl_context"] is None
    auth = credentials_to_aiokafka_auth(faust_credentials(_settings(security_protocol="SSL")))
    assert auth["security_protocol"] == "SSL" and isinstance(auth["ssl_context"], ssl.SSLContext)


def test_sasl_without_a_user_is_a_clear_error():
    with pytest.raises(ValueError, match="sasl_mechanism and kafka.sasl_username"):
        faust_credentials(_settings(security_protocol="SASL_SSL"))
