"""docker/Dockerfile and docker/compose.yaml agree with the code: commands, flags, settings.

No container runs here: the files are parsed, and what they ask of the gateway is checked
against the CLI, the settings and (for the image's health check) a running gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import sys
import tomllib
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import _parser
from gateway.migrate import MIGRATIONS_DIR
from gateway.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"
IMAGE = "messaging-gateway:local"


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    joined, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            joined.append(current.strip())
            current = ""
    return [(text.split(" ", 1)[0].upper(), text.split(" ", 1)[1]) for text in joined]


def only(name: str) -> str:
    [value] = [args for instruction, args in instructions() if instruction == name]
    return value


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def gateway_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose()["services"].items() if s.get("image") == IMAGE}


def interpolate(value: str) -> str:
    """Compose's ``${NAME:-default}``, with every variable unset (the defaults apply)."""
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def service_settings(service: dict[str, Any]) -> Settings:
    """The settings a service's environment gives the gateway."""
    env = {k: interpolate(str(v)) for k, v in service["environment"].items()}
    return Settings.load(**{k.removeprefix("GATEWAY_").lower(): v for k, v in env.items()})


def subcommand_parser(command: str) -> argparse.ArgumentParser:
    parser = _parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    chosen: argparse.ArgumentParser = commands.choices[command]
    return chosen


async def run_cli(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, output.decode()


def test_dockerfile_builds_in_two_stages_and_runs_as_a_user() -> None:
    """A builder stage makes wheels; the runtime stage installs them and drops root."""
    stages = [args for instruction, args in instructions() if instruction == "FROM"]
    assert len(stages) == 2 and stages[0].endswith(" AS builder")
    assert "pip wheel" in " ".join(a for i, a in instructions() if i == "RUN")
    runtime = instructions()[[i for i, _ in instructions()].index("FROM", 1):]
    assert any(i == "RUN" and "--no-index" in a and "/wheels" in a for i, a in runtime)
    user = only("USER").split(":")[0]
    assert user not in ("root", "0")


def test_the_image_puts_the_migrations_where_migrate_reads_them() -> None:
    """The runtime stage copies migrations/ beside the installed gateway package."""
    [python] = set(re.findall(r"python:(\d+\.\d+)-", DOCKERFILE.read_text()))
    [destination] = [
        args.split()[-1] for instruction, args in instructions()
        if instruction == "COPY" and args.split()[0] == "migrations"
    ]
    # MIGRATIONS_DIR is <directory holding the gateway package>/migrations.
    assert MIGRATIONS_DIR.name == "migrations"
    assert destination == f"/opt/venv/lib/python{python}/site-packages/migrations"
    assert any(i == "ENV" and "PATH=/opt/venv/bin:" in a for i, a in instructions())


async def test_entrypoint_and_cmd_are_the_gateway_command() -> None:
    """ENTRYPOINT is the `gateway` console script; CMD is a command it has."""
    assert json.loads(only("ENTRYPOINT")) == ["gateway"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["gateway"] == "gateway.cli:main"
    command = json.loads(only("CMD"))
    assert command == ["serve"]
    status, output = await run_cli(*command, "--help")
    assert status == 0 and "usage: gateway serve" in output


async def test_every_compose_command_exists_with_its_flags() -> None:
    """Each gateway service's command is a CLI command whose flags its parser knows."""
    services = gateway_services()
    assert {"migrate", "gateway-1", "gateway-2"} <= set(services)
    for name, service in services.items():
        command = service["command"]
        status, output = await run_cli(command[0], "--help")
        assert status == 0, (name, output)
        options = subcommand_parser(command[0])._option_string_actions
        flags = [word for word in command[1:] if word.startswith("-")]
        assert [flag for flag in flags if flag not in options] == [], name
        _parser().parse_args(command)  # values valid too (argparse exits otherwise)


def test_compose_variables_are_settings_and_make_valid_settings() -> None:
    """Every GATEWAY_* in compose.yaml is a setting; each service's environment loads."""
    known = {f"GATEWAY_{name.upper()}" for name in Settings.model_fields}
    named = set(re.findall(r"\bGATEWAY_[A-Z0-9_]*[A-Z0-9]", COMPOSE.read_text()))
    assert named and named - known == set()
    for name, service in gateway_services().items():
        settings = service_settings(service)
        settings.require("database_url", "amqp_url", "api_token")
        hosts = [
            urllib.parse.urlsplit(settings.database_url or "").hostname,
            urllib.parse.urlsplit(settings.amqp_url or "").hostname,
            settings.smtp_host,
        ]
        assert set(hosts) <= set(compose()["services"]), name  # they name compose services


def test_replicas_wait_for_migrations_and_healthy_backends() -> None:
    """The replicas start after `migrate` succeeded and their backends are healthy."""
    services = compose()["services"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    replicas = [name for name, s in gateway_services().items() if s["command"][0] == "serve"]
    assert len(replicas) == 2
    for name in replicas:
        grace = service_settings(services[name]).shutdown_grace_seconds
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["rabbitmq"]["condition"] == "service_healthy"
        assert float(services[name]["stop_grace_period"].removesuffix("s")) > grace
    for service in services.values():
        for dependency, rule in service.get("depends_on", {}).items():
            if rule["condition"] == "service_healthy":
                assert "test" in services[dependency].get("healthcheck", {}), dependency


async def test_the_image_health_check_passes_against_a_gateway_and_fails_without(
    clean: None, settings_for: Any, start_gateway: Any
) -> None:
    """The HEALTHCHECK command exits 0 against a running gateway's /healthz, non-zero without."""
    healthcheck = only("HEALTHCHECK")
    assert "curl" not in healthcheck and "/healthz" in healthcheck
    command = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert command[0] == "python"
    gateway = await start_gateway(settings_for(), consume=False)

    async def check(port: int) -> int:
        process = await asyncio.create_subprocess_exec(
            sys.executable, *command[1:], env={"GATEWAY_HTTP_PORT": str(port)},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        return await asyncio.wait_for(process.wait(), timeout=30)

    assert await check(gateway.port) == 0
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        free_port = unused.getsockname()[1]
    assert await check(free_port) != 0


@pytest.mark.parametrize("path", ["docker/Dockerfile", "docker/compose.yaml"])
def test_docker_files_are_documented_in_deploy_md(path: str) -> None:
    """docs/deploy.md names both files."""
    assert f"`{path}`" in (ROOT / "docs" / "deploy.md").read_text()
