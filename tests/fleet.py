"""Start real services of the fleet as processes on free loopback ports, for tests."""

from __future__ import annotations

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
