"""Build the provider adapters the settings configure, keyed as the dispatcher looks them up.

Keys: ``email``, ``sms``, ``push:apns``, ``push:fcm``. A channel whose provider is not
configured has no key, and its messages fail with "no sender configured".
"""

from __future__ import annotations

import email.utils

from adapters.apns import ApnsSender, load_apns_config
from adapters.base import Sender
from adapters.breaker import CircuitBreaker
from adapters.fcm import FcmSender, load_fcm_config
from adapters.guarded import GuardedSender
from adapters.smtp import SmtpConfig, SmtpSender
from adapters.twilio import TwilioConfig, TwilioSender, status_callback_url
from gateway.settings import ConfigError, Settings


def build_senders(settings: Settings) -> dict[str, Sender]:
    """Every sender the settings configure; raise :class:`ConfigError` for unusable credentials."""
    senders: dict[str, Sender] = {"email": _smtp(settings)}
    if settings.twilio_account_sid and settings.twilio_auth_token:
        senders["sms"] = _twilio(settings)
    try:
        if settings.apns_key_file:
            senders["push:apns"] = _guarded(_apns(settings), "apns", settings)
        if settings.fcm_credentials_file:
            senders["push:fcm"] = _guarded(_fcm(settings), "fcm", settings)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"configuration error: push credentials: {exc}") from None
    return senders


def _guarded(sender: Sender, name: str, settings: Settings) -> GuardedSender:
    breaker = CircuitBreaker(
        settings.breaker_failure_threshold, settings.breaker_reset_seconds, name=name
    )
    return GuardedSender(
        sender, rate=settings.push_rate_per_second, burst=settings.push_burst, breaker=breaker
    )


def _smtp(settings: Settings) -> SmtpSender:
    return SmtpSender(
        SmtpConfig(
            host=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username,
            password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
            tls=settings.smtp_tls.value,
            timeout=settings.smtp_timeout_seconds,
            pool_size=settings.smtp_pool_size,
            ca_file=str(settings.smtp_ca_file) if settings.smtp_ca_file else None,
            # Message-IDs in the sender's domain, as receiving filters expect.
            message_id_domain=email.utils.parseaddr(settings.email_from)[1].rpartition("@")[2]
            or None,
        )
    )


def _twilio(settings: Settings) -> TwilioSender:
    assert settings.twilio_account_sid and settings.twilio_auth_token  # checked by the caller
    return TwilioSender(
        TwilioConfig(
            account_sid=settings.twilio_account_sid,
            auth_token=settings.twilio_auth_token.get_secret_value(),
            base_url=settings.twilio_base_url,
            default_from=settings.sms_from,
            status_callback_url=status_callback_url(settings.public_url),
            rate_per_number=settings.sms_rate_per_second,
            number_rates=settings.sms_number_rates,
            max_concurrency=settings.sms_max_concurrency,
            timeout=settings.provider_timeout_seconds,
            breaker_threshold=settings.breaker_failure_threshold,
            breaker_reset_seconds=settings.breaker_reset_seconds,
        )
    )


def _apns(settings: Settings) -> ApnsSender:
    assert settings.apns_key_file is not None
    return ApnsSender(
        load_apns_config(
            settings.apns_key_file.read_bytes(),
            key_id=settings.apns_key_id,
            team_id=settings.apns_team_id,
            topic=settings.apns_topic,
            base_url=settings.apns_base_url,
            ca_file=str(settings.apns_ca_file) if settings.apns_ca_file else None,
            timeout=settings.provider_timeout_seconds,
            max_concurrency=settings.push_max_concurrency,
        )
    )


def _fcm(settings: Settings) -> FcmSender:
    assert settings.fcm_credentials_file is not None
    return FcmSender(
        load_fcm_config(
            settings.fcm_credentials_file.read_bytes(),
            base_url=settings.fcm_base_url,
            token_url=settings.fcm_token_url,
            timeout=settings.provider_timeout_seconds,
            max_concurrency=settings.push_max_concurrency,
        )
    )
