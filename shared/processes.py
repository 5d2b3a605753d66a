"""Start services of the fleet as local processes on free loopback ports.

The tests and the evaluation use this to run real services without the
fixed ports of ``make up``, so they never collide with a running fleet.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Service:
    name: str
    module: str
    env: dict[str, str]
    port: int
    log_path: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Fleet:
    """Processes by name; each started with uvicorn and waited on until /readyz is 200."""

    log_dir: Path
    services: dict[str, Service] = field(default_factory=dict)

    def add(self, name: str, module: str, env: dict[str, str]) -> Service:
        service = Service(name, module, env, free_port(), self.log_dir / f"{name}.log")
        self.services[name] = service
        return service

    def start(self, name: str, wait: bool = True) -> None:
        service = self.services[name]
        environment = {**os.environ, **service.env, "PYTHONPATH": str(REPO)}
        log = open(service.log_path, "ab")
        service.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", service.module, "--host", "127.0.0.1", "--port", str(service.port)],
            cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        if wait:
            self.wait_ready(name)

    def wait_ready(self, name: str, timeout: float = 120.0) -> None:
        service = self.services[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if service.process is not None and service.process.poll() is not None:
                raise RuntimeError(f"{name} exited with {service.process.returncode}:\n{self.log_tail(name)}")
            try:
                if httpx.get(f"{service.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{name} not ready after {timeout:.0f} s:\n{self.log_tail(name)}")

    def stop(self, name: str) -> None:
        service = self.services[name]
        if service.process is None or service.process.poll() is not None:
            return
        os.killpg(service.process.pid, signal.SIGTERM)
        try:
            service.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(service.process.pid, signal.SIGKILL)
            service.process.wait(timeout=5)

    def stop_all(self) -> None:
        for name in list(self.services):
            self.stop(name)

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.services[name].log_path
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def start_redis(port: int, log_dir: Path) -> subprocess.Popen:
    """Start a private redis-server (nothing saved to disk) for tests that stop it."""
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(log_dir)],
        stdout=open(log_dir / "redis.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("redis-server did not start")


def start_search_fleet(
    index_dir: Path, models: Path, log_dir: Path, redis_url: str | None = None, extra_env: dict[str, str] | None = None,
) -> Fleet:
    """Start a whole search fleet for one index folder and wait until it is ready:
    the detector, a classifier per category the index covers, its shards, and
    the gateway. Stop it with ``Fleet.stop_all``."""
    routing = json.loads((index_dir / "routing.json").read_text())
    categories = sorted({key.split("/")[0] for key in routing["keys"]})
    extra_env = extra_env or {}

    fleet = Fleet(log_dir)
    fleet.add("detector", "services.detector.app:app", {
        "DETECTOR_MODEL_DIR": str(models / "detector"), "DETECTOR_WEARER_MODEL_DIR": str(models / "wearer"), **extra_env,
    })
    for category in categories:
        fleet.add(f"classifier-{category}", "services.classifier.app:app", {
            "CLASSIFIER_CATEGORY": category, "CLASSIFIER_MODELS_DIR": str(models / "classifiers"), **extra_env,
        })
    for shard in routing["shards"]:
        fleet.add(shard, "services.index_shard.app:app", {"SHARD_NAME": shard, "SHARD_INDEX_DIR": str(index_dir), **extra_env})

    try:
        # Start every downstream service at once, then wait: startup is mostly imports.
        for name in list(fleet.services):
            fleet.start(name, wait=False)
        for name in list(fleet.services):
            fleet.wait_ready(name)

        urls = fleet.services
        gateway_env = {
            "GATEWAY_DETECTOR_URL": urls["detector"].url,
            "GATEWAY_CLASSIFIER_URLS": ",".join(f"{c}={urls[f'classifier-{c}'].url}" for c in categories),
            "GATEWAY_SHARD_URLS": ",".join(f"{s}={urls[s].url}" for s in routing["shards"]),
            "GATEWAY_INDEX_DIR": str(index_dir),
            "GATEWAY_DOWNSTREAM_TIMEOUT_SECONDS": "20",
            **extra_env,
        }
        if redis_url:
            gateway_env["REDIS_URL"] = redis_url
        fleet.add("gateway", "services.gateway.app:app", gateway_env)
        fleet.start("gateway")
    except BaseException:
        fleet.stop_all()
        raise
    return fleet
