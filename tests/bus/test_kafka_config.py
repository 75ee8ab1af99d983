"""triage/bus/kafka.py: settings are read once and validated together (no broker needed)."""
import pytest

from triage.bus.kafka import KafkaConfig
from triage.errors import ConfigError


def test_environment_supplies_security_settings():
    cfg = KafkaConfig.load({"TRIAGE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "TRIAGE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                            "TRIAGE_KAFKA_SASL_USERNAME": "svc", "TRIAGE_KAFKA_SASL_PASSWORD": "pw",
                            "TRIAGE_KAFKA_SSL_CAFILE": "/etc/ca.pem"}, bootstrap="k1:9093,k2:9093")
    args = cfg.client_args()
    assert args["bootstrap_servers"] == ["k1:9093", "k2:9093"]
    assert args["sasl_mechanism"] == "SCRAM-SHA-512" and args["sasl_plain_username"] == "svc"
    assert args["ssl_cafile"] == "/etc/ca.pem" and args["security_protocol"] == "SASL_SSL"


def test_arguments_win_over_environment():
    cfg = KafkaConfig.load({"TRIAGE_KAFKA_BOOTSTRAP": "env:9092", "TRIAGE_KAFKA_GROUP": "env"}, bootstrap="arg:9092")
    assert cfg.bootstrap == "arg:9092" and cfg.group == "env"


@pytest.mark.parametrize("env,message", [
    ({"TRIAGE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}, "SASL needs a mechanism"),
    ({"TRIAGE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "TRIAGE_KAFKA_SASL_MECHANISM": "PLAIN"}, "username and a password"),
    ({"TRIAGE_KAFKA_SASL_MECHANISM": "PLAIN"}, "protocol is PLAINTEXT"),
    ({"TRIAGE_KAFKA_HEARTBEAT_INTERVAL_MS": "5000"}, "a third of the session timeout"),
    ({"TRIAGE_KAFKA_MAX_POLL_INTERVAL_MS": "1000"}, "max poll interval"),
    ({"TRIAGE_KAFKA_SESSION_TIMEOUT_MS": "soon"}, "must be a number"),
    ({"TRIAGE_KAFKA_SECURITY_PROTOCOL": "TLS"}, "security protocol must be one of"),
])
def test_inconsistent_settings_are_refused(env, message):
    with pytest.raises(ConfigError, match=message):
        KafkaConfig.load(env, bootstrap="127.0.0.1:9092")


def test_bootstrap_is_required():
    with pytest.raises(ConfigError, match="no Kafka bootstrap servers"):
        KafkaConfig.load({})


def test_the_sasl_password_never_appears_in_the_settings_repr():
    config = KafkaConfig(bootstrap="127.0.0.1:9092", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                         sasl_username="triage", sasl_password="s3cret-Pa55")
    assert "s3cret-Pa55" not in repr(config) and "s3cret-Pa55" not in str(config)


def test_check_connection_names_a_server_that_is_not_there():
    from triage.bus.kafka import check_connection
    from triage.errors import BusError, BusSecurityError

    with pytest.raises(BusError, match=r"no Kafka broker answered at 127\.0\.0\.1:9 ") as err:
        check_connection(KafkaConfig(bootstrap="127.0.0.1:9"), timeout_s=3)
    assert not isinstance(err.value, BusSecurityError) and err.value.retriable
