"""Settings read from ``GATEWAY_*`` environment variables, and the one-line configuration errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.settings import ConfigError, LogFormat, Settings, SmtpTls

REQUIRED = {
    "GATEWAY_DATABASE_URL": "postgresql://gateway@db.internal:5432/gateway",
    "GATEWAY_AMQP_URL": "amqp://guest:guest@mq.internal:5672/",
    "GATEWAY_API_TOKEN": "a-token-of-at-least-16-chars",
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment holding the required settings and no other ``GATEWAY_*`` variable."""
    for name in list(os.environ):
        if name.startswith("GATEWAY_"):
            monkeypatch.delenv(name)
    for name, value in REQUIRED.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def config_error() -> str:
    """The message of the ConfigError that loading the environment for ``gateway serve`` raises."""
    with pytest.raises(ConfigError) as caught:
        Settings.load().require("database_url", "amqp_url", "api_token")
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_required_settings_are_read_and_the_rest_default(env: pytest.MonkeyPatch) -> None:
    """With only the required variables set, they are read and every other field has its default."""
    settings = Settings.load()
    assert settings.database_url == REQUIRED["GATEWAY_DATABASE_URL"]
    assert settings.amqp_url == REQUIRED["GATEWAY_AMQP_URL"]
    assert settings.api_token.get_secret_value() == REQUIRED["GATEWAY_API_TOKEN"]
    assert settings.http_port == 8080
    assert settings.http_host == "0.0.0.0"
    assert settings.prefetch == 400
    assert settings.smtp_tls is SmtpTls.none
    assert settings.log_format is None


def test_values_are_parsed_from_the_environment(env: pytest.MonkeyPatch) -> None:
    """Numbers and enums are parsed from their GATEWAY_ variables."""
    env.setenv("GATEWAY_HTTP_PORT", "9000")
    env.setenv("GATEWAY_SMTP_TLS", "starttls")
    env.setenv("GATEWAY_LOG_FORMAT", "json")
    env.setenv("GATEWAY_PREFETCH", "50")
    env.setenv("GATEWAY_RETRY_BASE_SECONDS", "0.5")
    settings = Settings.load()
    assert settings.http_port == 9000
    assert settings.smtp_tls is SmtpTls.starttls
    assert settings.log_format is LogFormat.json
    assert settings.prefetch == 50
    assert settings.retry_base_seconds == 0.5


def test_overrides_win_over_the_environment(env: pytest.MonkeyPatch) -> None:
    """Keyword overrides given to load() take precedence over the environment."""
    env.setenv("GATEWAY_HTTP_PORT", "9000")
    assert Settings.load(http_port=0).http_port == 0


def test_missing_required_settings_are_all_named_on_one_line(env: pytest.MonkeyPatch) -> None:
    """Every missing required variable is named in a single one-line ConfigError."""
    for name in REQUIRED:
        env.delenv(name)
    message = config_error()
    assert message.startswith("configuration error: ")
    for name in REQUIRED:
        assert f"{name} is required but not set" in message


def test_one_missing_setting_names_only_that_variable(env: pytest.MonkeyPatch) -> None:
    """A single missing variable is the only one named."""
    env.delenv("GATEWAY_AMQP_URL")
    message = config_error()
    assert message == "configuration error: GATEWAY_AMQP_URL is required but not set"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GATEWAY_HTTP_PORT", "eighty"),
        ("GATEWAY_HTTP_PORT", "70000"),
        ("GATEWAY_SMTP_TLS", "ssl"),
        ("GATEWAY_LOG_FORMAT", "xml"),
        ("GATEWAY_PREFETCH", "0"),
        ("GATEWAY_PREFETCH", "many"),
    ],
)
def test_malformed_value_is_named_with_what_was_given(
    name: str, value: str, env: pytest.MonkeyPatch
) -> None:
    """A malformed non-secret value is reported naming its variable and echoing the value."""
    env.setenv(name, value)
    message = config_error()
    assert message.startswith(f"configuration error: {name} is invalid (")
    assert f"got {value!r}" in message
    assert ";" not in message  # nothing else is reported


def test_all_malformed_values_are_named_together(env: pytest.MonkeyPatch) -> None:
    """Several malformed variables are all named in the one message."""
    bad = {
        "GATEWAY_HTTP_PORT": "x",
        "GATEWAY_SMTP_TLS": "x",
        "GATEWAY_LOG_FORMAT": "x",
        "GATEWAY_PREFETCH": "x",
    }
    for name, value in bad.items():
        env.setenv(name, value)
    message = config_error()
    assert all(f"{name} is invalid" in message for name in bad)
    assert message.count(" is invalid ") == len(bad)


def test_short_api_token_is_named_but_never_echoed(env: pytest.MonkeyPatch) -> None:
    """A too-short API token is reported by name without its value."""
    env.setenv("GATEWAY_API_TOKEN", "hunter2-secret")
    message = config_error()
    assert "GATEWAY_API_TOKEN is invalid" in message
    assert "hunter2" not in message


@pytest.mark.parametrize(
    ("name", "value", "shown"),
    [
        ("GATEWAY_DATABASE_URL", "mysql://root:hunter2@db.internal/x", "mysql://***@db.internal/x"),
        (
            "GATEWAY_AMQP_URL",
            "http://guest:hunter2@mq.internal:5672/",
            "http://***@mq.internal:5672/",
        ),
    ],
)
def test_credentials_in_a_malformed_url_are_never_echoed(
    name: str, value: str, shown: str, env: pytest.MonkeyPatch
) -> None:
    """A malformed URL is echoed with its user and password masked."""
    env.setenv(name, value)
    message = config_error()
    assert f"{name} is invalid" in message
    assert f"got {shown!r}" in message
    assert "hunter2" not in message and "root" not in message


def test_gateway_serve_without_database_url_exits_2_with_one_line() -> None:
    """The console script exits with status 2 and one stderr line naming GATEWAY_DATABASE_URL."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    environment.update(
        GATEWAY_AMQP_URL=REQUIRED["GATEWAY_AMQP_URL"],
        GATEWAY_API_TOKEN=REQUIRED["GATEWAY_API_TOKEN"],
    )
    script = Path(sys.executable).parent / "gateway"
    result = subprocess.run(
        [str(script), "serve"],
        check=False,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "configuration error: GATEWAY_DATABASE_URL is required but not set"
    ]


def test_migrate_needs_only_the_database(env: pytest.MonkeyPatch) -> None:
    """`gateway migrate` asks for GATEWAY_DATABASE_URL alone; the broker and token may be unset."""
    env.delenv("GATEWAY_AMQP_URL")
    env.delenv("GATEWAY_API_TOKEN")
    settings = Settings.load().require("database_url")
    assert settings.amqp_url is None


def test_unknown_log_level_is_refused(env: pytest.MonkeyPatch) -> None:
    """GATEWAY_LOG_LEVEL must be a level name, not silently replaced by info."""
    env.setenv("GATEWAY_LOG_LEVEL", "verbose")
    assert "GATEWAY_LOG_LEVEL is invalid" in config_error()


def test_unreachable_database_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """`gateway migrate` against a closed port exits 1 with one line saying it cannot start."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_DATABASE_URL"] = "postgresql://postgres@127.0.0.1:1/none"
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "migrate"], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 1
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gateway: cannot start: ")
