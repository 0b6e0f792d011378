"""HTTP routes for the global limits and the rules of each campaign.

Requests are validated here with pydantic (errors name the field) and stored in the normal form
of :mod:`gateway.rules`, which is also what the pipeline reads.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

from gateway.api import ApiError, json_response, requires
from gateway.api_support import invalid, pool_of, read_json, validated
from gateway.jobs import describe
from gateway.keys import Scope
from gateway.policy import QuietHours, valid_timezone
from gateway.policy_store import PolicyStore
from gateway.rules import CampaignRules, Limits

__all__ = ["CampaignRequest", "LimitsRequest", "policy_routes"]

Cap = Annotated[int, Field(ge=0)]
CampaignId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]
_CAMPAIGN_ID: TypeAdapter[str] = TypeAdapter(CampaignId)
_HHMM = {"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"}
# Validated by QuietHours.parse (which also refuses start == end); described for OpenAPI.
QuietHoursJson = Annotated[
    dict[str, Any] | None,
    WithJsonSchema(
        {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {"start": _HHMM, "end": _HHMM},
                    "required": ["start", "end"],
                    "additionalProperties": False,
                },
                {"type": "null"},
            ]
        }
    ),
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @field_validator("quiet_hours", check_fields=False)
    @classmethod
    def _window(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        window = QuietHours.parse(value)  # ValueError says what is wrong
        return window.to_json() if window else None


class LimitsRequest(_Request):
    """The body of ``PUT /v1/limits``; a key left out takes its default."""

    daily_cap: Cap | None = None
    daily_cap_per_channel: dict[Literal["email", "sms", "push"], Cap | None] = Field(
        default_factory=dict
    )
    quiet_hours: QuietHoursJson = None
    default_timezone: str = "UTC"
    transactional_bypass: bool = True

    @field_validator("default_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if not valid_timezone(value):
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as Europe/Lisbon)")
        return value

    def to_limits(self) -> Limits:
        """The validated request as stored rules."""
        return Limits(
            daily_cap=self.daily_cap,
            daily_cap_per_channel={str(k): v for k, v in self.daily_cap_per_channel.items()},
            quiet_hours=QuietHours.parse(self.quiet_hours),
            default_timezone=self.default_timezone,
            transactional_bypass=self.transactional_bypass,
        )


class CampaignRequest(_Request):
    """The body of ``PUT /v1/campaigns/{id}``. ``daily_cap`` and ``quiet_hours`` override the
    global rule only when present (``null`` included: "none for this campaign")."""

    cap: Cap | None = None
    daily_cap: Cap | None = None
    quiet_hours: QuietHoursJson = None

    def to_rules(self) -> CampaignRules:
        """The validated request as stored rules, keeping which overrides were given."""
        given = self.model_fields_set
        return CampaignRules(
            cap=self.cap,
            has_daily_cap="daily_cap" in given,
            daily_cap=self.daily_cap,
            has_quiet_hours="quiet_hours" in given,
            quiet_hours=QuietHours.parse(self.quiet_hours),
        )


def policy_routes() -> list[web.RouteDef]:
    """The routes of this module, for :func:`gateway.api.create_app`."""
    return [
        web.put("/v1/limits", put_limits),
        web.get("/v1/limits", get_limits),
        web.put("/v1/campaigns/{campaign_id}", put_campaign),
        web.get("/v1/campaigns/{campaign_id}", get_campaign),
    ]


@requires(Scope.admin)
async def put_limits(request: web.Request) -> web.Response:
    """Replace the global limits; answer them in their stored form."""
    limits = validated(LimitsRequest, await read_json(request)).to_limits()
    await PolicyStore(pool=pool_of(request)).put_limits(limits)
    return json_response(limits.to_json())


@requires(Scope.read)
async def get_limits(request: web.Request) -> web.Response:
    """The global limits (the defaults when never set)."""
    return json_response((await PolicyStore(pool=pool_of(request)).get_limits()).to_json())


@requires(Scope.admin)
async def put_campaign(request: web.Request) -> web.Response:
    """Create or replace a campaign's rules; 201 created, 200 replaced."""
    campaign_id = _campaign_id(request)
    rules = validated(CampaignRequest, await read_json(request)).to_rules()
    store = PolicyStore(pool=pool_of(request))
    created = await store.put_campaign(campaign_id, rules)
    return json_response(await _campaign(store, campaign_id, rules), status=201 if created else 200)


@requires(Scope.read)
async def get_campaign(request: web.Request) -> web.Response:
    """The campaign's rules and how many of its messages are in each status."""
    campaign_id = request.match_info["campaign_id"]
    store = PolicyStore(pool=pool_of(request))
    rules = await store.get_campaign(campaign_id)
    if rules is None:
        raise ApiError(404, "not_found", "no campaign with this id")
    return json_response(await _campaign(store, campaign_id, rules))


async def _campaign(store: PolicyStore, campaign_id: str, rules: CampaignRules) -> dict[str, Any]:
    counters = await store.campaign_counters(campaign_id)
    return {"id": campaign_id, **rules.to_json(), "counters": counters}


def _campaign_id(request: web.Request) -> str:
    try:
        return _CAMPAIGN_ID.validate_python(request.match_info["campaign_id"])
    except ValidationError as exc:
        raise invalid(f"campaign_id: {describe(exc)}") from None
