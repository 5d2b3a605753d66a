"""Helpers for the indexer and index shard tests: random index folders, a real
shard process on a free loopback port, and the models folder to use."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from services.indexer.indexfiles import IndexGroup, write_index_folder
from shared import taxonomy

REPO_ROOT = Path(__file__).resolve().parent.parent
SMOKE_MODELS = Path("/tmp/smoke-models")
HOST = "127.0.0.1"


def unit_vectors(count: int, dimension: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, dimension)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def build_index_dir(folder: Path, groups: list[IndexGroup], shards: int = 1, model_version: str = "test-model") -> dict:
    """Write an index folder the way the indexing job does; return its routing."""
    folder.mkdir(parents=True, exist_ok=True)
    categories = {key.split("/")[0] for key in (g.key for g in groups)}
    return write_index_folder(
        folder, groups, shards, "test-detector",
        {c: model_version for c in categories},
        {c: next(g.dimension for g in groups if g.key.startswith(c + "/")) for c in categories},
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


class ShardProcess:
    """A real index shard run by uvicorn in a subprocess, on 127.0.0.1."""

    def __init__(self, index_dir: Path, name: str, log_path: Path, **settings: str):
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        env = dict(os.environ, SHARD_NAME=name, SHARD_INDEX_DIR=str(index_dir))
        env.update({f"SHARD_{key.upper()}": str(value) for key, value in settings.items()})
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "services.index_shard.app:app", "--host", HOST, "--port", str(self.port)],
            cwd=REPO_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"shard exited with {self.process.returncode}:\n{self.log_text()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"shard not ready after {timeout} s:\n{self.log_text()}")

    def wait_exit(self, timeout: float = 60.0) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self.stop()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def models_dir() -> Path:
    """The trained models when all exist under the repository, else the smoke models.

    CI has the real trained models in models/; on a development machine before
    training finishes, the small smoke-trained ones in /tmp/smoke-models stand in.
    """
    real = REPO_ROOT / "models"
    cards = [real / "detector" / "card.json"] + [real / "classifiers" / c / "card.json" for c in taxonomy.CLASSIFIER_CATEGORIES]
    if all(card.exists() for card in cards):
        return real
    return SMOKE_MODELS


def wait_for_smoke_models(timeout: float = 600.0) -> bool:
    """Wait for the smoke models to be finished; False when they never are."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (SMOKE_MODELS / "DONE").exists():
            return True
        time.sleep(5)
    return False
