import pytest

from services.common.settings import KafkaSettings, ServiceSettings, SettingsError, load_settings


def test_environment_overrides_nested_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAULTLINE_KAFKA__BOOTSTRAP_SERVERS", "a:1,b:2")
    monkeypatch.setenv("FAULTLINE_GRPC__PORT", "7001")
    monkeypatch.setenv("FAULTLINE_GRPC__AUTH_TOKEN", "s3cret")
    settings = load_settings(ServiceSettings)
    assert settings.kafka.client_config()["bootstrap_servers"] == ["a:1", "b:2"]
    assert settings.grpc.port == 7001
    assert settings.grpc.auth_token is not None and settings.grpc.auth_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)  # secrets never reach logs


def test_invalid_value_exits_with_the_variable_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FAULTLINE_GRPC__PORT", "99999")
    with pytest.raises(SettingsError) as exit_info:
        load_settings(ServiceSettings)
    assert exit_info.value.code == 2
    assert "FAULTLINE_GRPC__PORT" in capsys.readouterr().err


def test_sasl_without_credentials_is_rejected() -> None:
    with pytest.raises(ValueError, match="needs sasl_mechanism"):
        KafkaSettings(security_protocol="SASL_SSL")
    config = KafkaSettings(
        security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_username="u", sasl_password="p"
    ).client_config()
    assert config["sasl_plain_password"] == "p"


def test_tls_files_must_come_in_pairs(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("FAULTLINE_GRPC__TLS_CERTFILE", str(tmp_path / "cert.pem"))
    with pytest.raises(SettingsError):
        load_settings(ServiceSettings)


def test_a_grpc_port_flag_replaces_only_the_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAULTLINE_GRPC__PORT", "7000")
    monkeypatch.setenv("FAULTLINE_GRPC__MAX_MESSAGE_BYTES", "1048576")
    settings = load_settings(ServiceSettings, grpc_port=7001)
    assert (settings.grpc.port, settings.grpc.max_message_bytes) == (7001, 1048576)
    assert load_settings(ServiceSettings).grpc.port == 7000
