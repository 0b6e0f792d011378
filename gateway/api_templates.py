"""HTTP routes for stored templates: versions, soft delete, and the render preview.

A body is validated with pydantic (errors name the field) and every Jinja string in it is
compiled in the sandboxed environment it will render in, so a syntax error is answered at
``PUT`` (``email.html line 3: unexpected '}'``) instead of failing messages later.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gateway.api import ApiError, json_response, requires
from gateway.api_support import invalid, pool_of, read_json, validated
from gateway.errors import MessageFailed
from gateway.keys import Scope
from gateway.render import Renderer
from gateway.segments import sms_segments
from gateway.template_render import render_template
from gateway.templates import (
    TemplateBody,
    Templates,
    TemplateVersion,
    check_syntax,
    not_found_reason,
    valid_name,
)

__all__ = ["RenderRequest", "template_routes"]

MAX_VERSION = 2**31 - 1  # PostgreSQL integer


class RenderRequest(BaseModel):
    """The body of ``POST /v1/templates/{name}/render``."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    channel: Literal["email", "sms", "push"]
    data: dict[str, Any] = Field(default_factory=dict)
    user: dict[str, Any] = Field(default_factory=dict, description="Attributes, as {{ user.x }}")
    locale: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    version: Annotated[int, Field(ge=1, le=MAX_VERSION)] | None = None


def template_routes(*, renderer: Renderer | None = None) -> list[web.RouteDef]:
    """The routes of this module, for :func:`gateway.api.create_app`; they share one renderer
    (and its compile cache), a new one unless given."""
    handlers = _Handlers(renderer or Renderer())
    return [
        web.get("/v1/templates", handlers.list_templates),
        web.put("/v1/templates/{name}", handlers.put_template),
        web.get("/v1/templates/{name}", handlers.get_template),
        web.delete("/v1/templates/{name}", handlers.delete_template),
        web.post("/v1/templates/{name}/render", handlers.render_preview),
    ]


class _Handlers:
    def __init__(self, renderer: Renderer) -> None:
        self._renderer = renderer

    @requires(Scope.admin)
    async def put_template(self, request: web.Request) -> web.Response:
        """Store a new version when the body differs from the latest: 201, else 200 with the
        latest version unchanged."""
        name = request.match_info["name"]
        if not valid_name(name):
            raise invalid(f"name: 1-200 letters, digits, '.', '_' or '-', got {name[:80]!r}")
        body = validated(TemplateBody, await read_json(request))
        if b"\\u0000" in orjson.dumps(body.to_json()):
            # PostgreSQL's jsonb cannot hold NUL.
            raise invalid("body: NUL characters (\\u0000) are not allowed")
        try:
            check_syntax(body, self._renderer)
        except ValueError as exc:
            raise invalid(str(exc)) from None
        template, created = await Templates(pool=pool_of(request)).put(name, body)
        return json_response(template.to_json(), status=201 if created else 200)

    @requires(Scope.read)
    async def get_template(self, request: web.Request) -> web.Response:
        """The latest version, or the one ``?version=N`` pins (deleted names included)."""
        version = _version_query(request.query.get("version"))
        return json_response((await self._load(request, version)).to_json())

    @requires(Scope.read)
    async def list_templates(self, request: web.Request) -> web.Response:
        """Every template that is not deleted, by name, with its latest version."""
        return json_response({"items": await Templates(pool=pool_of(request)).names()})

    @requires(Scope.admin)
    async def delete_template(self, request: web.Request) -> web.Response:
        """Soft delete: 204; the name stops resolving, its versions still load by number."""
        if not await Templates(pool=pool_of(request)).delete(request.match_info["name"]):
            raise ApiError(404, "not_found", "no template with this name")
        return web.Response(status=204)

    @requires(Scope.send)
    async def render_preview(self, request: web.Request) -> web.Response:
        """Render a version for a channel with the given data, as a message would be."""
        preview = validated(RenderRequest, await read_json(request))
        template = await self._load(request, preview.version)
        try:
            rendered = render_template(
                self._renderer,
                template,
                preview.channel,
                data=preview.data,
                user_attributes=preview.user,
                locale=preview.locale,
            )
        except MessageFailed as exc:
            raise ApiError(422, "render_failed", exc.reason) from None
        answer: dict[str, Any] = {
            "name": rendered.name,
            "version": rendered.version,
            "channel": rendered.channel,
            "locale": rendered.locale,
            "parts": rendered.parts(),
        }
        if rendered.body is not None and rendered.channel == "sms":
            answer["encoding"], answer["segments"] = sms_segments(rendered.body)
        return json_response(answer)

    async def _load(self, request: web.Request, version: int | None) -> TemplateVersion:
        name = request.match_info["name"]
        template = await Templates(pool=pool_of(request)).get(name, version)
        if template is None:
            raise ApiError(404, "not_found", not_found_reason((name, version))[:300])
        return template


def _version_query(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_VERSION:
        raise invalid(f"version: must be a positive integer, got {text[:40]!r}")
    return int(text)
