"""``kafka.*`` client security (protocol, SASL, TLS) in the words of each Kafka client we run:
aiokafka (the daemon's clients and, through Faust, the streams worker), the Kafka Java client
(the Flink connector) and librdkafka (the Flink job's lag probe).

This is the one mapping of those settings. It lives in ``schemas`` because the PyFlink job runs
in its own environment that has ``schemas`` and ``streams`` but not ``daemon``.
"""

from __future__ import annotations

from typing import Any

from schemas.settings import KafkaSettings

# the Flink SQL Kafka connector shades the Kafka client, login modules included
FLINK_SHADED = "org.apache.flink.kafka.shaded."


def check(kafka: KafkaSettings) -> None:
    """A SASL protocol without a mechanism or a user cannot log in: say so in the settings' words
    rather than letting a client fail on a missing argument."""
    if kafka.security_protocol.startswith("SASL") and not (kafka.sasl_mechanism and kafka.sasl_username):
        raise ValueError(f"kafka.security_protocol={kafka.security_protocol} needs kafka.sasl_mechanism "
                         "and kafka.sasl_username (and kafka.sasl_password)")


def _password(kafka: KafkaSettings) -> str | None:
    return kafka.sasl_password.get_secret_value() if kafka.sasl_password else None


def aiokafka_kwargs(kafka: KafkaSettings) -> dict[str, Any]:
    """aiokafka's security arguments (no address): ``security_protocol``, ``sasl_*``, ``ssl_context``."""
    check(kafka)
    kw: dict[str, Any] = {"security_protocol": kafka.security_protocol}
    if kafka.sasl_mechanism:
        kw["sasl_mechanism"] = kafka.sasl_mechanism
        kw["sasl_plain_username"] = kafka.sasl_username
        kw["sasl_plain_password"] = _password(kafka)
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        kw["ssl_context"] = create_ssl_context(cafile=kafka.ssl_cafile)
    return kw


def _jaas_quote(value: str) -> str:
    # JAAS options are double-quoted strings read with backslash escapes
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def java_properties(kafka: KafkaSettings, shaded: str = FLINK_SHADED) -> dict[str, str]:
    """Kafka Java client properties; ``shaded``: the package prefix of the client's classes."""
    check(kafka)
    props = {"security.protocol": kafka.security_protocol}
    if kafka.sasl_mechanism:
        module = "plain.PlainLoginModule" if kafka.sasl_mechanism == "PLAIN" else "scram.ScramLoginModule"
        props["sasl.mechanism"] = kafka.sasl_mechanism
        props["sasl.jaas.config"] = (f"{shaded}org.apache.kafka.common.security.{module} required "
                                     f"username={_jaas_quote(kafka.sasl_username or '')} "
                                     f"password={_jaas_quote(_password(kafka) or '')};")
    if kafka.ssl_cafile:
        props.update({"ssl.truststore.type": "PEM", "ssl.truststore.location": str(kafka.ssl_cafile)})
    return props


def librdkafka_config(kafka: KafkaSettings) -> dict[str, str]:
    """librdkafka (confluent-kafka) security settings, no address or group."""
    check(kafka)
    conf = {"security.protocol": kafka.security_protocol.lower()}
    if kafka.sasl_mechanism:
        conf.update({"sasl.mechanism": kafka.sasl_mechanism, "sasl.username": kafka.sasl_username or "",
                     "sasl.password": _password(kafka) or ""})
    if kafka.ssl_cafile:
        conf["ssl.ca.location"] = str(kafka.ssl_cafile)
    return conf
