"""Settings: one class, read once from ``GATEWAY_*`` environment variables in the entry point.

Nothing here is a module-level singleton: ``Settings.load()`` is called by the CLI and the
resulting object is passed down to whatever needs it. Provider endpoints and timeouts are
fields, so tests point them at local fake servers.
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import Field, PositiveFloat, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SmtpTls(str, Enum):
    """How the SMTP connection is secured."""

    none = "none"
    starttls = "starttls"
    tls = "tls"


class LogFormat(str, Enum):
    """Log renderer: ``json`` for machines, ``console`` for people."""

    json = "json"
    console = "console"


class ConfigError(Exception):
    """Raised when the environment holds a missing or malformed setting; the message is one line."""


class Settings(BaseSettings):
    """Every knob of the gateway. Each field maps to ``GATEWAY_<FIELD NAME IN UPPER CASE>``."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", frozen=True)

    # Connections
    # Required by the commands that use them (see ``require``), so ``gateway migrate`` needs
    # only the database.
    database_url: str | None = Field(None, description="PostgreSQL DSN, postgresql://user@host/db")
    amqp_url: str | None = Field(None, description="RabbitMQ URL, e.g. amqp://guest:guest@host:5672/")
    database_pool_size: int = Field(10, ge=1, le=200)

    # HTTP API
    http_host: str = "0.0.0.0"
    http_port: int = Field(8080, ge=0, le=65535)
    api_token: SecretStr | None = Field(
        None, min_length=16, description="Bootstrap API key (scope admin) for every /v1 route"
    )
    max_request_bytes: int = Field(1024 * 1024, ge=1024)
    api_key_cache_seconds: float = Field(
        5.0, ge=0, description="How long a process trusts a looked-up API key (revocation delay)"
    )

    # Consumer
    prefetch: int = Field(400, ge=1, le=65535, description="Unacked jobs per queue consumer")
    batch_size: int = Field(100, ge=1, le=5000)
    batch_wait_ms: int = Field(5, ge=0, le=10_000)
    max_job_bytes: int = Field(256 * 1024, ge=1024, description="Larger jobs go to gateway.dead")
    shutdown_grace_seconds: float = Field(20.0, ge=0)

    # Retries and the durable scheduler
    max_attempts: int = Field(8, ge=1, le=100)
    retry_base_seconds: float = Field(10.0, gt=0)
    retry_max_seconds: float = Field(3600.0, gt=0)
    scheduler_interval_seconds: float = Field(1.0, gt=0)
    processing_lease_seconds: float = Field(
        300.0, gt=0, description="A claimed message is re-queued if not finished by then"
    )
    requeue_after_seconds: float = Field(900.0, gt=0)

    # Email over SMTP
    smtp_host: str = "localhost"
    smtp_port: int = Field(25, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_tls: SmtpTls = SmtpTls.none
    smtp_ca_file: Path | None = Field(None, description="CA bundle to trust instead of the system's")
    smtp_timeout_seconds: float = Field(30.0, gt=0)
    # Opened as needed, up to this many. 4 made a batch's emails queue behind each other
    # (bench/runs.md); Postfix's own default per destination is 20 concurrent deliveries.
    smtp_pool_size: int = Field(16, ge=1, le=100)
    email_from: str = "Gateway <noreply@localhost>"

    # Logs
    log_format: LogFormat | None = Field(None, description="Default: console on a TTY, else json")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # Dev mode
    dev_data_dir: Path = Path(".gateway-dev")

    # --- SMS over Twilio, and the limits every HTTP provider shares (docs/channels.md) ---
    twilio_account_sid: str | None = Field(None, description="Twilio account SID, AC...")
    twilio_auth_token: SecretStr | None = None
    twilio_base_url: str = Field("https://api.twilio.com", pattern=r"^https?://")
    sms_from: str | None = Field(None, description="Default origination number (From)")
    public_url: str | None = Field(
        None, pattern=r"^https?://", description="The gateway's externally visible base URL"
    )
    sms_rate_per_second: float = Field(
        1.0, gt=0, description="Sends a second per origination number (US 10DLC: 1)"
    )
    sms_number_rates: dict[str, PositiveFloat] = Field(
        default_factory=dict, description='Per-number rates, JSON: {"12345": 100}'
    )
    sms_max_concurrency: int = Field(50, ge=1, le=1000)
    provider_timeout_seconds: float = Field(10.0, gt=0)
    breaker_failure_threshold: int = Field(5, ge=1)
    breaker_reset_seconds: float = Field(30.0, gt=0)
    # --- end of SMS settings ---

    # --- Push over APNs and FCM (docs/channels.md) ---
    # Key files hold secrets, so settings name the files rather than carry their contents.
    apns_base_url: str = Field(
        "https://api.push.apple.com", pattern=r"^https?://",
        description="APNs endpoint; sandbox: https://api.sandbox.push.apple.com",
    )
    apns_key_file: Path | None = Field(None, description="The .p8 token signing key (ES256)")
    apns_key_id: str | None = Field(None, min_length=1, description="The .p8 key's 10-char id")
    apns_team_id: str | None = Field(None, min_length=1, description="Apple developer team id")
    apns_topic: str | None = Field(None, min_length=1, description="The app's bundle id")
    apns_ca_file: Path | None = Field(None, description="CA bundle to trust, not the system's")
    fcm_credentials_file: Path | None = Field(None, description="Service account key, JSON")
    fcm_base_url: str = Field("https://fcm.googleapis.com", pattern=r"^https?://")
    fcm_token_url: str = Field("https://oauth2.googleapis.com/token", pattern=r"^https?://")
    push_max_concurrency: int = Field(
        200, ge=1, le=10_000, description="Pushes in flight per provider and process"
    )
    push_rate_per_second: float = Field(
        1000.0, gt=0, description="Token-bucket rate per push provider and process"
    )
    push_burst: int = Field(100, ge=1, description="Token-bucket burst per push provider")
    # --- end of push settings ---

    # --- One-click unsubscribe in emails (docs/templates.md) ---
    # Unset: emails carry no List-Unsubscribe header and no link can be verified.
    unsubscribe_secret: SecretStr | None = Field(
        None, min_length=16, description="Signs one-click unsubscribe links (HMAC-SHA256)"
    )
    unsubscribe_mailto: str | None = Field(
        None,
        pattern=r'^[^\s<>,"@]+@[^\s<>,"@]+$',
        description="Address for the mailto: alternative of List-Unsubscribe",
    )
    # --- end of unsubscribe settings ---

    # --- Two-way SMS: inbound webhooks and auto-replies (docs/two-way-sms.md) ---
    # Unset secrets: that provider's webhook answers 503 (Twilio's uses twilio_auth_token).
    telnyx_public_key: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9+/]{43}=$",
        description="Telnyx account public key (Ed25519), base64 of the 32 raw bytes",
    )
    vonage_signature_secret: SecretStr | None = Field(
        None, min_length=1, description="Vonage signature secret for signed inbound webhooks"
    )
    vonage_signature_method: Literal["md5hash", "md5", "sha1", "sha256", "sha512"] = Field(
        "md5hash", description="Vonage signature method, as set in the Vonage dashboard"
    )
    inbound_max_replies_per_hour: int = Field(
        3, ge=0, le=1000, description="Auto-replies per sender per number per hour (0: none)"
    )
    # --- end of two-way SMS settings ---

    # --- RabbitMQ queue type, for scale-out on a cluster (docs/deploy.md) ---
    # RabbitMQ never converts a queue: changing this for existing queues stops the start with a
    # one-line error until the queues are moved (docs/deploy.md#switching-queue-types).
    amqp_queue_type: Literal["classic", "quorum"] = Field(
        "classic", description="x-queue-type of the gateway's queues; quorum: replicated, durable"
    )
    # --- end of queue type settings ---

    # --- Data retention (docs/architecture.md#data-retention) ---
    retention_days: int | None = Field(
        None, ge=1, description="Purge finished messages older than this, daily (unset: never)"
    )
    # --- end of retention settings ---

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql://")
        return value

    @field_validator("amqp_url")
    @classmethod
    def _amqp_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("amqp://", "amqps://")):
            raise ValueError("must start with amqp:// or amqps://")
        return value

    @classmethod
    def load(cls, **overrides: Any) -> "Settings":
        """Read the environment (plus ``overrides``); raise :class:`ConfigError` naming the setting."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc)) from None


    def require(self, *names: str) -> "Settings":
        """Raise :class:`ConfigError` naming each of ``names`` that is not set; else ``self``."""
        missing = [f"GATEWAY_{n.upper()} is required but not set" for n in names if getattr(self, n) is None]
        if missing:
            raise ConfigError("configuration error: " + "; ".join(missing))
        return self

    @property
    def token(self) -> str:
        """The API token (``require("api_token")`` first)."""
        if self.api_token is None:
            raise ConfigError("configuration error: GATEWAY_API_TOKEN is required but not set")
        return self.api_token.get_secret_value()


def describe_validation_error(exc: ValidationError) -> str:
    """Turn pydantic's report into one line naming each bad ``GATEWAY_*`` variable."""
    parts = []
    for error in exc.errors():
        name = "GATEWAY_" + "_".join(str(p) for p in error["loc"]).upper()
        if error["type"] == "missing":
            parts.append(f"{name} is required but not set")
        else:
            shown = _shown_input(name, error.get("input"))
            parts.append(f"{name} is invalid ({error['msg']}{shown})")
    return "configuration error: " + "; ".join(parts)


# Everything between ``scheme://`` and the last ``@`` of a URL: user and password.
_URL_CREDENTIALS = re.compile(r"(?<=://)\S*@")


def _shown_input(name: str, value: object) -> str:
    # Never echo a secret back into a log or terminal, the credentials of a URL included.
    if any(word in name for word in ("TOKEN", "PASSWORD", "SECRET")) or isinstance(value, Mapping):
        return ""
    if isinstance(value, str):
        value = _URL_CREDENTIALS.sub("***@", value)
    return f", got {value!r}"
