"""Keep README.md and docs/ true to the code: settings, routes, error codes, modules, links."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from adapters.sandbox import Outbox
from gateway.api import create_app
from gateway.devmode import DEV_TOKEN, _banner, outbox_routes
from gateway.outcomes import Status
from gateway.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def section(text: str, heading: str) -> str:
    """The text under ``heading`` (a whole line) up to the next heading of the same level."""
    level = heading.split(" ", 1)[0]
    start = text.index(f"\n{heading}\n")
    end = text.find(f"\n{level} ", start + 1)
    return text[start : end if end != -1 else len(text)]


def doc_files() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def test_every_setting_is_documented_in_configuration_md() -> None:
    """Every field of Settings appears as its GATEWAY_<NAME> variable in docs/configuration.md."""
    text = read(DOCS / "configuration.md")
    missing = [
        f"GATEWAY_{name.upper()}"
        for name in Settings.model_fields
        if f"`GATEWAY_{name.upper()}`" not in text
    ]
    assert missing == []


def test_every_documented_variable_is_a_setting() -> None:
    """Every GATEWAY_<NAME> variable named in README.md or docs/ is a field of Settings."""
    known = {f"GATEWAY_{name.upper()}" for name in Settings.model_fields}
    for path in [README, *doc_files()]:
        named = set(re.findall(r"\bGATEWAY_[A-Z0-9_]*[A-Z0-9]", read(path)))
        assert named - known == set(), path.name


def test_every_route_is_documented_in_http_api_md() -> None:
    """Every route of create_app, the dev outbox included, is named 'METHOD path' in http-api.md."""
    settings = Settings(
        database_url="postgresql://x@localhost/x", amqp_url="amqp://localhost/", api_token="x" * 16
    )
    app = create_app(
        settings=settings,
        store=None,  # type: ignore[arg-type]
        broker=None,  # type: ignore[arg-type]
        extra_routes=outbox_routes(Outbox()),
    )
    routes = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert ("POST", "/v1/messages") in routes  # the app really was inspected
    text = read(DOCS / "http-api.md")
    named = {f"{method} {path}" for method, path in routes}
    missing = sorted(route for route in named if route not in text)
    assert missing == []


def _api_error_codes() -> set[str]:
    """The error codes gateway/api.py can answer with, read from its source."""
    tree = ast.parse(read(ROOT / "gateway" / "api.py"))
    codes: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id == "ApiError" and len(node.args) > 1:
            if isinstance(node.args[1], ast.Constant):
                codes.add(node.args[1].value)
        # The status-to-code mapping: {404: "not_found", ...}.get(status, "http_error")
        mapping = func.value if isinstance(func, ast.Attribute) and func.attr == "get" else None
        if isinstance(mapping, ast.Dict):
            codes.update(v.value for v in mapping.values if isinstance(v, ast.Constant))
            codes.update(a.value for a in node.args[1:] if isinstance(a, ast.Constant))
    return codes


def test_every_error_code_is_documented_in_http_api_md() -> None:
    """Every error code raised in gateway/api.py appears in docs/http-api.md."""
    codes = _api_error_codes()
    assert {"unauthorized", "invalid_json", "invalid_job", "not_found"} <= codes
    text = read(DOCS / "http-api.md")
    assert sorted(c for c in codes if f"`{c}`" not in text) == []


def test_every_event_status_is_documented_in_jobs_md() -> None:
    """Every message status appears with its routing key message.<status> in docs/jobs.md."""
    text = read(DOCS / "jobs.md")
    assert sorted(s.value for s in Status if f"`message.{s.value}`" not in text) == []


def test_every_module_is_in_the_module_map() -> None:
    """Every module of gateway/ and adapters/ has a line in the module map of architecture.md."""
    module_map = section(read(DOCS / "architecture.md"), "## Module map")
    gateway_part, _, adapters_part = module_map.partition("`adapters/`:")
    for package, part in (("gateway", gateway_part), ("adapters", adapters_part)):
        for module in sorted((ROOT / package).glob("*.py")):
            assert f"- `{module.name}`:" in part, f"{package}/{module.name}"


def test_make_run_and_make_test_are_in_the_first_40_lines_of_the_readme() -> None:
    """README.md shows `make run` and `make test` within its first 40 lines."""
    head = "\n".join(read(README).splitlines()[:40])
    assert "make run" in head
    assert "make test" in head


def test_readme_has_the_curl_that_gateway_dev_prints(capsys: pytest.CaptureFixture[str]) -> None:
    """The tour's curl is exactly the one gateway dev's banner prints on port 8080."""
    gateway = SimpleNamespace(port=8080, settings=SimpleNamespace(token=DEV_TOKEN))
    _banner(gateway, SimpleNamespace(path=Path(".gateway-dev/outbox.jsonl")))
    banner = capsys.readouterr().err
    [curl] = [line.split("try it", 1)[1].strip()
              for line in banner.splitlines() if "try it" in line]
    assert curl.startswith("curl ")
    assert curl in read(README)


def test_every_doc_is_linked_from_the_readme() -> None:
    """Every docs/*.md file is linked from README.md."""
    readme = read(README)
    assert doc_files(), "docs/ holds no Markdown file"
    assert [p.name for p in doc_files() if f"](docs/{p.name})" not in readme] == []


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file (fenced code skipped)."""
    anchors = set()
    in_code = False
    for line in read(path).splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_relative_links_and_anchors_resolve() -> None:
    """Every relative link in README.md and docs/ names an existing file and heading."""
    broken = []
    for path in [README, *doc_files()]:
        for target in re.findall(r"\]\(([^)\s]+)\)", read(path)):
            if re.match(r"[a-z]+:", target):
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                broken.append(f"{path.name}: {target}")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{path.name}: {target}")
    assert broken == []
