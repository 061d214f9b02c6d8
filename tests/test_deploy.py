"""The container image and the manifests, as far as they can be checked without Docker or a
cluster (neither runs on this machine):

- the Dockerfile's build steps (its COPY lines into a fresh source dir, its `pip install`)
  run in a clean virtualenv, and its CMD started from that venv, outside the checkout, on
  real Postgres and Valkey: the HEALTHCHECK command (exactly as written, with the test's
  port) passes, /health/ready is 200, and SIGTERM exits 0. This downloads the dependencies
  (about a minute; pip's cache makes later runs faster);
- compose.yaml and deploy/kubernetes/*.yaml parse, their environment variables are the ones
  the gateway reads, their config parses as Settings, and every probe path and port they name
  is one the app serves; the shutdown timings cover the drain's bound.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.app import create_app
from gateway.config import DATABASE_URL_ENV, REDIS_URL_ENV, Settings, parse_settings
from gateway.drain import EXIT_MARGIN_S
from tests.helpers.serve_process import free_port

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
K8S = ROOT / "deploy" / "kubernetes"


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) per instruction, continuation lines joined."""
    text = re.sub(r"\\\n\s*", "", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def contract_env(settings: Settings) -> set[str]:
    """Every environment variable the gateway reads for this config."""
    names = {DATABASE_URL_ENV, REDIS_URL_ENV, settings.admin.token_env, settings.alerts.secret_env}
    names |= {p.api_key_env for p in settings.providers.values() if p.api_key_env}
    return names


def served_paths(settings: Settings) -> set[str]:
    app = create_app(settings, database_url="postgresql://unused", redis_url="redis://unused")
    return {r.canonical for r in app.router.resources()}


def k8s_docs() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[doc["kind"]] = doc
    return docs


def test_kubernetes_manifests_probe_what_the_app_serves_and_outlast_the_drain() -> None:
    docs = k8s_docs()
    assert {"ConfigMap", "Secret", "Job", "Deployment", "Service", "PodDisruptionBudget"} <= set(
        docs
    )
    settings = parse_settings(
        docs["ConfigMap"]["data"]["config.yaml"].encode(), "/etc/tollbooth/config.yaml"
    )
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (gateway,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert ports == {"http": settings.server.port}
    paths = served_paths(settings)
    for probe, path in (
        ("readinessProbe", "/health/ready"),
        ("livenessProbe", "/health/live"),
        ("startupProbe", "/health/live"),
    ):
        assert gateway[probe]["httpGet"] == {"path": path, "port": "http"}
        assert path in paths
    assert gateway["args"][:2] == ["tollbooth", "serve"]
    assert "/etc/tollbooth/config.yaml" in gateway["args"]
    assert {"mountPath": "/etc/tollbooth", "name": "config", "readOnly": True} in gateway[
        "volumeMounts"
    ]

    pre_stop_s = float(gateway["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pre_stop_s >= settings.server.drain_grace_s
    # SIGTERM comes after the preStop hook; the grace period counts both.
    assert pod["terminationGracePeriodSeconds"] > (
        pre_stop_s + settings.server.drain_timeout_s + EXIT_MARGIN_S
    )

    labels = docs["Deployment"]["spec"]["selector"]["matchLabels"]
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == labels
    assert docs["Service"]["spec"]["selector"] == labels
    assert docs["Deployment"]["spec"]["template"]["metadata"]["labels"] == labels
    job = docs["Job"]["spec"]["template"]["spec"]["containers"][0]
    assert job["command"][:2] == ["tollbooth", "migrate"]
    assert set(docs["Secret"]["stringData"]) <= contract_env(settings)


def test_compose_runs_the_gateway_on_real_servers_with_the_contracts_variables() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    settings = parse_settings(
        (ROOT / "deploy" / "config.yaml").read_bytes(), "/etc/tollbooth/config.yaml"
    )
    gateway = services["gateway"]
    assert {DATABASE_URL_ENV, REDIS_URL_ENV} <= set(gateway["environment"])
    assert set(gateway["environment"]) <= contract_env(settings)
    assert gateway["environment"][DATABASE_URL_ENV].startswith("postgresql://")
    assert gateway["environment"][REDIS_URL_ENV].startswith("redis://")
    assert gateway["ports"] == [f"{settings.server.port}:{settings.server.port}"]
    assert float(gateway["stop_grace_period"].rstrip("s")) > (
        settings.server.drain_timeout_s + EXIT_MARGIN_S
    )
    assert services["migrate"]["command"][:2] == ["tollbooth", "migrate"]
    assert {"postgres", "valkey"} <= set(services)


def test_dockerfile_default_config_and_healthcheck_match_the_app() -> None:
    steps = dockerfile()
    settings = parse_settings(
        (ROOT / "deploy" / "config.yaml").read_bytes(), "/etc/tollbooth/config.yaml"
    )
    (expose,) = [args for word, args in steps if word == "EXPOSE"]
    assert int(expose) == settings.server.port
    (check,) = [args for word, args in steps if word == "HEALTHCHECK"]
    assert f"http://127.0.0.1:{settings.server.port}/health/live" in check
    assert "/health/live" in served_paths(settings)
    assert ("USER", "10001") in steps


@pytest.mark.slow
@pytest.mark.timeout(420)
async def test_dockerfile_install_and_start_steps_in_a_clean_venv(
    tmp_path: Path,
    fresh_database_url: str,
    redis_url: str,
) -> None:
    """Slow (a clean `pip install`): the build stage's steps, then the image's CMD."""
    steps = dockerfile()
    build = steps[: [i for i, (word, _) in enumerate(steps) if word == "FROM"][1]]
    src, venv = tmp_path / "src", tmp_path / "venv"
    src.mkdir()
    for word, args in build:  # COPY <from...> <to>, relative to WORKDIR /src
        if word == "COPY":
            *sources, _ = args.split()
            for name in sources:
                source = ROOT / name
                if source.is_dir():
                    shutil.copytree(source, src / source.name)
                else:
                    shutil.copy(source, src / source.name)
    (install,) = [args for word, args in build if word == "RUN"]
    install = install.replace("/opt/tollbooth", str(venv)).replace("/src", str(src))
    assert "pip install" in install
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # `python` in the RUN line is the image's: here this interpreter, without site-packages.
    install = install.replace("python -m venv", f"{sys.executable} -m venv")
    done = await asyncio.to_thread(
        subprocess.run,
        install,
        shell=True,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=360,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    # The image's CMD from the venv, outside the checkout, on a copy of its default config.
    config = yaml.safe_load((ROOT / "deploy" / "config.yaml").read_text())
    port = free_port()
    config["server"]["port"] = port
    config["storage"]["data_dir"] = str(tmp_path / "data")
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    (cmd,) = [args for word, args in steps if word == "CMD"]
    argv = [
        part.replace("/etc/tollbooth/config.yaml", str(config_path)) for part in json.loads(cmd)
    ]
    env.update(
        {
            "PATH": f"{venv / 'bin'}:{env['PATH']}",
            DATABASE_URL_ENV: fresh_database_url,
            REDIS_URL_ENV: redis_url,
            "OPENAI_API_KEY": "sk-x",
            "ANTHROPIC_API_KEY": "sk-x",
        }
    )
    where = await asyncio.to_thread(
        subprocess.run,
        [str(venv / "bin" / "python"), "-c", "import gateway; print(gateway.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(venv)), where.stdout  # the installed package
    serve = await asyncio.to_thread(
        subprocess.Popen,
        argv,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        (check,) = [args for word, args in steps if word == "HEALTHCHECK"]
        probe = json.loads(check.partition("CMD ")[2].replace("8080", str(port)))
        healthy = False
        for _ in range(120):
            assert serve.poll() is None, serve.stdout.read() if serve.stdout else ""
            result = await asyncio.to_thread(
                subprocess.run, probe, env=env, capture_output=True, timeout=10
            )
            if result.returncode == 0:
                healthy = True
                break
            await asyncio.sleep(0.5)
        assert healthy, "the HEALTHCHECK never passed"
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/health/ready") as response,
        ):
            assert response.status == 200
    finally:
        if serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(serve.wait, 60)
    assert code == 0
