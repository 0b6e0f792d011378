"""The OpenAPI 3.1 document of the HTTP API, built as data and served at ``GET /openapi.json``.

Request bodies reuse the pydantic models the handlers validate with (and the send job's
published schema); answers are described here. Each operation names the scope it needs in
``x-scope``. ``tests/test_openapi.py`` keeps the document true: every route is in it and every
operation in it is a route, and schemathesis sends generated requests to a live gateway and
checks each answer against it.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel

from gateway.api_keys import KeyRequest
from gateway.api_policy import CampaignRequest, LimitsRequest
from gateway.api_templates import MAX_VERSION, RenderRequest
from gateway.jobs import job_json_schema
from gateway.numbers import NumberConfig
from gateway.optouts import OptOutRequest
from gateway.recipients import User, UserPatch
from gateway.templates import TemplateBody

__all__ = ["openapi_document", "openapi_routes"]

Json = dict[str, Any]

_STRING: Json = {"type": "string"}
_TIME: Json = {"type": "string", "format": "date-time"}
_TIME_OR_NULL: Json = {"anyOf": [_TIME, {"type": "null"}]}
_STRING_OR_NULL: Json = {"type": ["string", "null"]}
_COUNT: Json = {"type": "integer", "minimum": 0}
_CAP: Json = {"type": ["integer", "null"], "minimum": 0}

# The error answers, one per status: every one is {"error": {"code", "message", "details"}}.
_ERRORS = {
    400: (
        "BadRequest",
        "The body is not JSON (`invalid_json`), or a webhook, callback or multipart upload is"
        " malformed (`invalid_webhook`, `invalid_callback`, `invalid_multipart`)",
    ),
    401: ("Unauthorized", "Missing, unknown or revoked key (`unauthorized`)"),
    403: (
        "Forbidden",
        "The key's scope is too small (`forbidden`), or a signature does not verify"
        " (`invalid_signature`)",
    ),
    404: ("NotFound", "No such path or resource (`not_found`, `unknown_number`)"),
    409: ("Conflict", "The name is taken (`conflict`)"),
    413: ("PayloadTooLarge", "The body is over the route's limit (`payload_too_large`)"),
    415: (
        "UnsupportedMediaType",
        "The upload is neither multipart, CSV nor JSON lines (`unsupported_media_type`)",
    ),
    422: (
        "Unprocessable",
        "The body or a parameter breaks a rule; the message names the field"
        " (`invalid_request`, `invalid_job`, `render_failed`)",
    ),
    503: (
        "NotConfigured",
        "The secret this route checks with is not configured (`not_configured`)",
    ),
}


def openapi_routes() -> list[web.RouteDef]:
    """The route serving the document, for :func:`gateway.api.create_app` (no key needed)."""
    return [web.get("/openapi.json", get_openapi)]


async def get_openapi(_request: web.Request) -> web.Response:
    """The OpenAPI document of this API."""
    return web.Response(body=_document_bytes(), content_type="application/json")


@cache
def _document_bytes() -> bytes:
    return orjson.dumps(openapi_document())


def openapi_document() -> Json:
    """The whole document, built afresh."""
    schemas: Json = {"Error": _error_schema()}
    paths: Json = {}
    for build in (
        _message_paths,
        _recipient_paths,
        _policy_paths,
        _number_paths,
        _template_paths,
        _report_paths,
        _key_paths,
        _webhook_paths,
        _service_paths,
    ):
        for path, operations in build(schemas).items():
            paths.setdefault(path, {}).update(operations)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Messaging gateway",
            "version": "1",
            "description": "Scopes: admin ⊇ send ⊇ read; each operation's is in x-scope."
            " See docs/http-api.md.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {
                name: _json_answer(description, {"$ref": "#/components/schemas/Error"})
                for name, description in _ERRORS.values()
            },
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key or GATEWAY_API_TOKEN",
                }
            },
        },
    }


# -- building blocks -----------------------------------------------------------------------------


def _error_schema() -> Json:
    return _object(
        {
            "error": _object(
                {"code": _STRING, "message": _STRING, "details": {}},
            )
        }
    )


def _object(properties: Json, *, optional: tuple[str, ...] = (), extra: bool = False) -> Json:
    """An object with these properties, all required but ``optional``."""
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
        "additionalProperties": extra,
    }


def _page(item: Json) -> Json:
    return _object({"items": {"type": "array", "items": item}, "next_cursor": _STRING_OR_NULL})


def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _model(schemas: Json, model: type[BaseModel], *, optional: tuple[str, ...] = ()) -> Json:
    """A pydantic model's validation schema as a component; ``optional`` drops required names
    (``PUT /v1/users/{user_id}`` takes the id from its path)."""
    schema = model.model_json_schema()
    if optional:
        schema["required"] = [n for n in schema.get("required", []) if n not in optional]
    return _component(schemas, model.__name__, schema)


def _component(schemas: Json, name: str, schema: Json) -> Json:
    """Move ``schema`` and its ``$defs`` into the components; a ``$ref`` to it."""
    schema = copy.deepcopy(schema)
    for key in ("$schema", "$id"):  # an $id would make its refs relative to another document
        schema.pop(key, None)
    for def_name, definition in schema.pop("$defs", {}).items():
        _add(schemas, def_name, _rewrite(definition))
    _add(schemas, name, _rewrite(schema))
    return _ref(name)


def _add(schemas: Json, name: str, schema: Json) -> None:
    if schemas.setdefault(name, schema) != schema:
        raise ValueError(f"two different schemas are named {name}")


def _rewrite(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: (v.replace("#/$defs/", "#/components/schemas/") if k == "$ref" else _rewrite(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_rewrite(v) for v in value]
    return value


def _json_answer(description: str, schema: Json) -> Json:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(schema: Json, *, required: bool = True, media: str = "application/json") -> Json:
    return {"required": required, "content": {media: {"schema": schema}}}


def _path(name: str, description: str, schema: Json | None = None) -> Json:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema or {"type": "string", "minLength": 1},
    }


def _query(name: str, description: str, schema: Json, *, empty_is_absent: bool = True) -> Json:
    """An optional query parameter; most routes read ``name=`` as if it were not given."""
    if empty_is_absent:
        schema = {"anyOf": [schema, {"const": ""}]}
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def _header(name: str, description: str) -> Json:
    return {
        "name": name,
        "in": "header",
        "required": True,
        "description": description,
        "schema": _STRING,
    }


def _op(
    summary: str,
    scope: str | None,
    answers: Json,
    *,
    errors: tuple[int, ...] = (),
    parameters: list[Json] | None = None,
    body: Json | None = None,
) -> Json:
    """One operation. ``scope`` ``None``: no bearer key (public, or checked by a signature)."""
    operation: Json = {"summary": summary}
    if scope is None:
        operation["security"] = []
    else:
        operation["security"] = [{"bearer": []}]
        operation["x-scope"] = scope
        errors = (401, 403, *errors)
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = body
    operation["responses"] = {
        **answers,
        **{str(s): {"$ref": f"#/components/responses/{_ERRORS[s][0]}"} for s in sorted(errors)},
    }
    return operation


_NO_CONTENT: Json = {"204": {"description": "Done; no body"}}
_LIMIT = _query(
    "limit", "Page size, 1-1000 (default 100)", {"type": "integer", "minimum": 1, "maximum": 1000}
)
_CURSOR = _query("cursor", "The next_cursor of the previous page", _STRING)


# -- messages --------------------------------------------------------------------------------------


def _message_paths(schemas: Json) -> Json:
    job = _component(schemas, "Job", job_json_schema())
    event = _object({"status": _STRING, "reason": _STRING_OR_NULL, "timestamp": _TIME}, extra=True)
    delivery = _object(
        {
            "address": _STRING,
            "status": _STRING,
            "reason": _STRING_OR_NULL,
            "provider_message_id": _STRING_OR_NULL,
            "updated_at": _TIME,
        }
    )
    message = _object(
        {
            "id": _STRING,
            "channel": _STRING,
            "kind": _STRING,
            "status": _STRING,
            "reason": _STRING_OR_NULL,
            "attempts": _COUNT,
            "campaign_id": _STRING_OR_NULL,
            "provider_message_id": _STRING_OR_NULL,
            "send_at": _TIME_OR_NULL,
            "expires_at": _TIME_OR_NULL,
            "due_at": _TIME_OR_NULL,
            "created_at": _TIME,
            "updated_at": _TIME,
            "deliveries": {"type": "array", "items": delivery},
            "events": {"type": "array", "items": event},
        }
    )
    accepted = _object(
        {
            "id": _STRING,
            "status": {"const": "accepted"},
            "kind": {"enum": ["promotional", "transactional"]},
        }
    )
    duplicate = _object({"id": _STRING, "status": _STRING, "duplicate": {"const": True}})
    found = _object(
        {
            "id": _STRING,
            "channel": _STRING,
            "kind": _STRING,
            "status": _STRING,
            "reason": _STRING_OR_NULL,
            "to": {"type": "object"},
            "campaign_id": _STRING_OR_NULL,
            "provider_message_id": _STRING_OR_NULL,
            "attempts": _COUNT,
            "created_at": _TIME,
            "updated_at": _TIME,
        }
    )
    search = _object(
        {"messages": {"type": "array", "items": found}, "next_cursor": _STRING_OR_NULL}
    )
    return {
        "/v1/messages": {
            "get": _op(
                "Find messages, newest first, a page at a time",
                "read",
                {"200": _json_answer("The page", search)},
                errors=(422,),
                parameters=[
                    _query("address", "An address, matched as the pipeline records it", _STRING),
                    _query("status", "One or several statuses, comma-separated", _STRING),
                    _query("campaign_id", "Only this campaign", _STRING),
                    _query("channel", "Only this channel", {"enum": ["email", "sms", "push"]}),
                    _query("since", "Created at or after: a date or an RFC 3339 time", _STRING),
                    _query(
                        "limit",
                        "Page size, 1-200 (default 50)",
                        {"type": "integer", "minimum": 1, "maximum": 200},
                    ),
                    _CURSOR,
                ],
            ),
            "post": _op(
                "Accept a send job",
                "send",
                {
                    "202": _json_answer("Accepted, recorded and published", accepted),
                    "200": _json_answer("The id is known: nothing is done again", duplicate),
                },
                errors=(400, 413, 422),
                body=_body(job),
            ),
        },
        "/v1/messages/{id}": {
            "get": _op(
                "A message's status and timeline",
                "read",
                {"200": _json_answer("The message", _component(schemas, "Message", message))},
                errors=(404,),
                parameters=[_path("id", "The job id")],
            )
        },
    }


# -- users and opt-outs ----------------------------------------------------------------------------


def _recipient_paths(schemas: Json) -> Json:
    endpoint = _object(
        {
            "channel": _STRING,
            "address": _STRING,
            "platform": _STRING_OR_NULL,
            "active": {"type": "boolean"},
        }
    )
    user = _component(
        schemas,
        "UserAnswer",
        _object(
            {
                "id": _STRING,
                "timezone": _STRING_OR_NULL,
                "locale": _STRING_OR_NULL,
                "attributes": {"type": "object"},
                "endpoints": {"type": "array", "items": endpoint},
                "created_at": _TIME,
                "updated_at": _TIME,
            }
        ),
    )
    opt_out = _component(
        schemas,
        "OptOut",
        _object({"channel": _STRING, "address": _STRING, "source": _STRING, "created_at": _TIME}),
    )
    summary = _object(
        {
            "imported": _COUNT,
            "updated": _COUNT,
            "rejected": {"type": "array", "items": _object({"line": _COUNT, "reason": _STRING})},
            "rejected_count": _COUNT,
        }
    )
    user_id = [
        _path("user_id", "The user's id", {"type": "string", "minLength": 1, "maxLength": 128})
    ]
    key = [
        _path("channel", "email, sms or push", {"enum": ["email", "sms", "push"]}),
        _path("address", "The address, URL-encoded"),
    ]
    upload = {
        "required": True,
        "content": {
            "multipart/form-data": {
                # Any bytes are a file to read (see the raw bodies below).
                "schema": _object({"file": {"description": "The CSV or JSON-lines file"}})
            },
            # Any text is a file to read; what it holds is answered row by row in the summary.
            "text/csv": {"schema": {"description": "CSV with a header row"}},
            "application/x-ndjson": {"schema": {"description": "One user per line"}},
        },
    }
    return {
        "/v1/users:import": {
            "post": _op(
                "Import users from CSV or JSON lines",
                "admin",
                {"200": _json_answer("The import summary", summary)},
                errors=(400, 413, 415, 422),
                body=upload,
            )
        },
        "/v1/users/{user_id}": {
            "put": _op(
                "Create or replace a user",
                "admin",
                {"201": _json_answer("Created", user), "200": _json_answer("Replaced", user)},
                errors=(400, 404, 413, 422),
                parameters=user_id,
                body=_body(_model(schemas, User, optional=("id",))),
            ),
            "get": _op(
                "A user",
                "read",
                {"200": _json_answer("The user", user)},
                errors=(404,),
                parameters=user_id,
            ),
            "patch": _op(
                "Merge attributes, add or update endpoints",
                "admin",
                {"200": _json_answer("The user afterwards", user)},
                errors=(400, 404, 413, 422),
                parameters=user_id,
                body=_body(_model(schemas, UserPatch)),
            ),
            "delete": _op("Remove a user", "admin", _NO_CONTENT, errors=(404,), parameters=user_id),
        },
        "/v1/opt-outs": {
            "get": _op(
                "A page of opt-outs",
                "read",
                {"200": _json_answer("The page", _page(opt_out))},
                errors=(422,),
                parameters=[
                    _query("channel", "Only this channel", {"enum": ["email", "sms", "push"]}),
                    _LIMIT,
                    _CURSOR,
                ],
            )
        },
        "/v1/opt-outs/{channel}/{address}": {
            "put": _op(
                "Opt an address out",
                "admin",
                {
                    "201": _json_answer("Opted out", opt_out),
                    "200": _json_answer("Already was", opt_out),
                },
                errors=(400, 404, 413, 422),
                parameters=key,
                body=_body(_model(schemas, OptOutRequest), required=False),
            ),
            "get": _op(
                "An opt-out",
                "read",
                {"200": _json_answer("The entry", opt_out)},
                errors=(404, 422),
                parameters=key,
            ),
            "delete": _op(
                "Opt an address back in", "admin", _NO_CONTENT, errors=(404, 422), parameters=key
            ),
        },
    }


# -- limits and campaigns --------------------------------------------------------------------------


def _policy_paths(schemas: Json) -> Json:
    window = {"anyOf": [_object({"start": _STRING, "end": _STRING}), {"type": "null"}]}
    limits = _component(
        schemas,
        "Limits",
        _object(
            {
                "daily_cap": _CAP,
                "daily_cap_per_channel": {"type": "object", "additionalProperties": _CAP},
                "quiet_hours": window,
                "default_timezone": _STRING,
                "transactional_bypass": {"type": "boolean"},
            }
        ),
    )
    campaign = _component(
        schemas,
        "Campaign",
        _object(
            {
                "id": _STRING,
                "cap": _CAP,
                "daily_cap": _CAP,
                "quiet_hours": window,
                "counters": {"type": "object", "additionalProperties": _COUNT},
            },
            optional=("daily_cap", "quiet_hours"),
        ),
    )
    campaign_id = [
        _path(
            "campaign_id", "The campaign's id", {"type": "string", "minLength": 1, "maxLength": 128}
        )
    ]
    return {
        "/v1/limits": {
            "put": _op(
                "Replace the global limits",
                "admin",
                {"200": _json_answer("The limits as stored", limits)},
                errors=(400, 413, 422),
                body=_body(_model(schemas, LimitsRequest)),
            ),
            "get": _op("The global limits", "read", {"200": _json_answer("The limits", limits)}),
        },
        "/v1/campaigns/{campaign_id}": {
            "put": _op(
                "Create or replace a campaign's rules",
                "admin",
                {
                    "201": _json_answer("Created", campaign),
                    "200": _json_answer("Replaced", campaign),
                },
                errors=(400, 404, 413, 422),
                parameters=campaign_id,
                body=_body(_model(schemas, CampaignRequest)),
            ),
            "get": _op(
                "A campaign's rules and counters",
                "read",
                {"200": _json_answer("The campaign", campaign)},
                errors=(404,),
                parameters=campaign_id,
            ),
        },
    }


# -- numbers ---------------------------------------------------------------------------------------


def _number_paths(schemas: Json) -> Json:
    number = _component(
        schemas,
        "Number",
        _object(
            {
                "number": _STRING,
                "help_text": _STRING,
                "stop_text": _STRING,
                "start_text": _STRING,
                "keywords": {"type": "object", "additionalProperties": _STRING},
                "forward": {"type": "boolean"},
                "opt_out_scope": {"enum": ["number", "all"]},
                "created_at": _TIME,
                "updated_at": _TIME,
            }
        ),
    )
    path = [_path("number", "E.164; the + as is or as %2B")]
    return {
        "/v1/numbers": {
            "get": _op(
                "A page of our numbers",
                "read",
                {"200": _json_answer("The page", _page(number))},
                errors=(422,),
                parameters=[_LIMIT, _CURSOR],
            )
        },
        "/v1/numbers/{number}": {
            "put": _op(
                "Register a number or replace its configuration",
                "admin",
                {
                    "201": _json_answer("Registered", number),
                    "200": _json_answer("Replaced", number),
                },
                errors=(400, 404, 413, 422),
                parameters=path,
                body=_body(_model(schemas, NumberConfig), required=False),
            ),
            "get": _op(
                "A number's configuration",
                "read",
                {"200": _json_answer("The number", number)},
                errors=(404, 422),
                parameters=path,
            ),
            "delete": _op(
                "Forget a number", "admin", _NO_CONTENT, errors=(404, 422), parameters=path
            ),
        },
    }


# -- templates -------------------------------------------------------------------------------------


def _template_paths(schemas: Json) -> Json:
    body = _model(schemas, TemplateBody)
    version = {"type": "integer", "minimum": 1, "maximum": MAX_VERSION}
    template = _component(
        schemas,
        "Template",
        _object({"name": _STRING, "version": version, "created_at": _TIME, "body": body}),
    )
    listed = _object(
        {
            "items": {
                "type": "array",
                "items": _object({"name": _STRING, "version": version, "updated_at": _TIME}),
            }
        }
    )
    rendered = _object(
        {
            "name": _STRING,
            "version": version,
            "channel": {"enum": ["email", "sms", "push"]},
            "locale": _STRING_OR_NULL,
            "parts": {"type": "object"},
            "encoding": {"enum": ["GSM-7", "UCS-2"]},
            "segments": _COUNT,
        },
        optional=("encoding", "segments"),
    )
    name = [_path("name", "1-200 letters, digits, '.', '_' or '-'")]
    return {
        "/v1/templates": {
            "get": _op(
                "Every template not deleted", "read", {"200": _json_answer("The names", listed)}
            )
        },
        "/v1/templates/{name}": {
            "put": _op(
                "Store a new version when the body differs from the latest",
                "admin",
                {
                    "201": _json_answer("A new version", template),
                    "200": _json_answer("Unchanged: the latest version", template),
                },
                errors=(400, 404, 413, 422),
                parameters=name,
                body=_body(body),
            ),
            "get": _op(
                "The latest version, or version N",
                "read",
                {"200": _json_answer("The version", template)},
                errors=(404, 422),
                parameters=[
                    *name,
                    _query("version", "A version number", version, empty_is_absent=False),
                ],
            ),
            "delete": _op(
                "Soft-delete a template", "admin", _NO_CONTENT, errors=(404,), parameters=name
            ),
        },
        "/v1/templates/{name}/render": {
            "post": _op(
                "Render a version as a message would be",
                "send",
                {"200": _json_answer("The rendered parts", rendered)},
                errors=(400, 404, 413, 422),
                parameters=name,
                body=_body(_model(schemas, RenderRequest)),
            )
        },
    }


# -- reports ---------------------------------------------------------------------------------------


def _report_paths(_schemas: Json) -> Json:
    figures = {
        "messages": _COUNT,
        "sent": _COUNT,
        "pending": _COUNT,
        "suppressed": _object(
            {"total": _COUNT, "by_reason": {"type": "object", "additionalProperties": _COUNT}}
        ),
        "opt_outs": {"type": ["integer", "null"], "minimum": 0},
        "delivery_rate": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
    }
    day = {**_object({"date": {"type": "string", "format": "date"}, **figures}, extra=True)}
    report = _object(
        {
            "from": {"type": "string", "format": "date"},
            "to": {"type": "string", "format": "date"},
            "channel": _STRING_OR_NULL,
            "campaign_id": _STRING_OR_NULL,
            **figures,
            "days": {"type": "array", "items": day},
        },
        extra=True,  # a count for each outcome status, too
    )
    day_query = {"type": "string", "format": "date"}
    return {
        "/v1/reports/deliverability": {
            "get": _op(
                "Sent, delivered, failed, suppressed and opt-outs by day",
                "read",
                {"200": _json_answer("The report", report)},
                errors=(422,),
                parameters=[
                    _query("from", "First UTC day (default: 29 days before to)", day_query),
                    _query("to", "Last UTC day (default: today)", day_query),
                    _query("channel", "Only this channel", {"enum": ["email", "sms", "push"]}),
                    _query(
                        "campaign_id", "Only this campaign", {"type": "string", "maxLength": 128}
                    ),
                ],
            )
        }
    }


# -- API keys --------------------------------------------------------------------------------------


def _key_paths(schemas: Json) -> Json:
    fields = {
        "id": {"type": "string", "pattern": "^[0-9a-f]{8}$"},
        "name": _STRING,
        "scope": {"enum": ["read", "send", "admin"]},
        "created_at": _TIME,
        "last_used_at": _TIME_OR_NULL,
        "revoked_at": _TIME_OR_NULL,
    }
    key = _component(schemas, "Key", _object(fields))
    created = _object({**fields, "key": {"type": "string", "description": "Shown this once"}})
    return {
        "/v1/keys": {
            "post": _op(
                "Make an API key",
                "admin",
                {"201": _json_answer("The key, with its text shown this once", created)},
                errors=(400, 409, 413, 422),
                body=_body(_model(schemas, KeyRequest)),
            ),
            "get": _op(
                "Every key, never a secret",
                "admin",
                {
                    "200": _json_answer(
                        "The keys", _object({"items": {"type": "array", "items": key}})
                    )
                },
            ),
        },
        "/v1/keys/{id}": {
            "delete": _op(
                "Revoke a key",
                "admin",
                _NO_CONTENT,
                errors=(404,),
                parameters=[_path("id", "The key's id")],
            ),
        },
    }


# -- provider webhooks and unsubscribe links (no bearer key) ---------------------------------------


def _webhook_paths(_schemas: Json) -> Json:
    form = {"type": "object", "additionalProperties": _STRING}
    received = _json_answer("Processed", _object({"status": {"enum": ["received", "ignored"]}}))
    webhook_errors = (400, 403, 404, 413, 503)
    token = [_path("token", "The signed token of the link")]
    return {
        "/v1/inbound/sms/twilio": {
            "post": _op(
                "Twilio's inbound SMS webhook; the auto-reply as TwiML",
                None,
                {"200": {"description": "TwiML", "content": {"text/xml": {"schema": _STRING}}}},
                errors=webhook_errors,
                parameters=[_header("X-Twilio-Signature", "Twilio's signature")],
                body=_body(form, media="application/x-www-form-urlencoded"),
            )
        },
        "/v1/inbound/sms/telnyx": {
            "post": _op(
                "Telnyx's inbound SMS webhook",
                None,
                {"200": received},
                errors=webhook_errors,
                parameters=[
                    _header("telnyx-signature-ed25519", "Ed25519 signature, base64"),
                    _header("telnyx-timestamp", "Unix time the signature covers"),
                ],
                body=_body({"type": "object"}),
            )
        },
        "/v1/inbound/sms/vonage": {
            "post": _op(
                "Vonage's inbound SMS webhook (signed with sig)",
                None,
                {"200": received},
                errors=webhook_errors,
                body={
                    "required": True,
                    "content": {
                        "application/x-www-form-urlencoded": {"schema": form},
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": {"type": ["string", "number", "boolean"]},
                            }
                        },
                    },
                },
            )
        },
        "/v1/status/twilio": {
            "post": _op(
                "Twilio's status callback",
                None,
                _NO_CONTENT,
                errors=(400, 403, 413, 503),
                parameters=[_header("X-Twilio-Signature", "Twilio's signature")],
                body=_body(form, media="application/x-www-form-urlencoded"),
            )
        },
        "/v1/unsubscribe/{token}": {
            "post": _op(
                "One-click unsubscribe (RFC 8058)",
                None,
                {
                    "200": {
                        "description": "Unsubscribed",
                        "content": {"text/plain": {"schema": _STRING}},
                    }
                },
                errors=(400, 403, 404, 413, 503),
                parameters=token,
                body={
                    "required": True,
                    "content": {
                        "application/x-www-form-urlencoded": {"schema": form},
                        "multipart/form-data": {"schema": form},
                    },
                },
            ),
            "get": _op(
                "A page with the unsubscribe button; opts nobody out",
                None,
                {"200": {"description": "The page", "content": {"text/html": {"schema": _STRING}}}},
                errors=(403, 404, 503),
                parameters=token,
            ),
        },
    }


# -- the service itself ----------------------------------------------------------------------------


def _service_paths(_schemas: Json) -> Json:
    ready = _object(
        {
            "status": {"enum": ["ready", "not_ready"]},
            "checks": _object({"database": _STRING, "broker": _STRING}),
        }
    )
    return {
        "/healthz": {
            "get": _op(
                "The process is up",
                None,
                {"200": _json_answer("Up", _object({"status": {"const": "ok"}}))},
            )
        },
        "/readyz": {
            "get": _op(
                "The database and the broker answer",
                None,
                {"200": _json_answer("Ready", ready), "503": _json_answer("Not ready", ready)},
            )
        },
        "/metrics": {
            "get": _op(
                "Metrics in the Prometheus text format",
                None,
                {
                    "200": {
                        "description": "The metrics",
                        "content": {"text/plain": {"schema": _STRING}},
                    }
                },
            )
        },
        "/openapi.json": {
            "get": _op(
                "This document", None, {"200": _json_answer("OpenAPI 3.1", {"type": "object"})}
            )
        },
    }
