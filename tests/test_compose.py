"""docker-compose.yml, checked without a Docker engine.

The structural check (deploy/check_compose.py) always runs; each mutation test
shows that it detects one kind of mistake. The client-side `config` check runs when
`docker compose` or Debian's `docker-compose` is installed and is skipped,
with the reason, otherwise.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from tests.deploy_modules import load_deploy_module

REPO_ROOT = Path(__file__).resolve().parent.parent



check_compose = load_deploy_module("check_compose")
fleet = check_compose.load_fleet()

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def procfile_services() -> list:
    return fleet.load_services(fleet.Paths(fleet.DEFAULT_PROCFILE, fleet.DEFAULT_ENV_FILE, fleet.DEFAULT_STATE_DIR))


def test_structure_check_passes(compose, procfile_services):
    assert check_compose.check(compose, REPO_ROOT, procfile_services) == []


def test_script_passes_without_cli():
    assert check_compose.main(["--no-cli"]) == 0


def drop_classifier(c):
    del c["services"]["classifier-belt"]
    # Keep the gateway's list consistent, so only the missing category is at fault.
    del c["services"]["gateway"]["depends_on"]["classifier-belt"]


def loopback_url(c):
    c["services"]["gateway"]["environment"]["GATEWAY_DETECTOR_URL"] = "http://127.0.0.1:8100"


def shard_starts_early(c):
    c["services"]["shard-0"]["depends_on"]["indexer"]["condition"] = "service_started"


def no_healthcheck(c):
    del c["services"]["detector"]["healthcheck"]


def undeclared_volume(c):
    c["services"]["shard-1"]["volumes"] = ["catalog:/data/index:ro"]


def unknown_dependency(c):
    c["services"]["gateway"]["depends_on"]["cache"] = {"condition": "service_healthy"}


def writable_models(c):
    c["services"]["detector"]["volumes"] = ["./models:/app/models"]


def writable_chosen_models(c):
    c["services"]["classifier-top"]["volumes"] = ["${MODELS_DIR:-./models}:/app/models"]


def wrong_port(c):
    c["services"]["classifier-top"]["environment"]["PORT"] = "9999"


def unquoted_restart(c):
    c["services"]["indexer"]["restart"] = False


def public_port(c):
    c["services"]["gateway"]["ports"] = ["8000:8000"]


@pytest.mark.parametrize(("mutate", "expected"), [
    (drop_classifier, "category belt: 0 classifier services"),
    (loopback_url, "points at a loopback address"),
    (shard_starts_early, "shard-0: should wait for indexer with condition service_completed_successfully"),
    (no_healthcheck, "detector: long-running service without a healthcheck"),
    (undeclared_volume, "volume 'catalog' is not declared"),
    (unknown_dependency, "depends on cache, which is not a service"),
    (writable_models, "detector: the models at ./models should be mounted read-only"),
    (writable_chosen_models, "classifier-top: the models at ${MODELS_DIR:-./models} should be mounted read-only"),
    (wrong_port, "classifier-top: PORT=9999 in Compose, 8110 in the Procfile"),
    (unquoted_restart, "quote it as \"no\""),
    (public_port, "published on every interface"),
])
def test_structural_check_catches(compose, procfile_services, mutate, expected):
    broken = copy.deepcopy(compose)
    mutate(broken)
    problems = check_compose.check(broken, REPO_ROOT, procfile_services)
    assert any(expected in problem for problem in problems), problems


def client_or_skip() -> list[str]:
    cli = check_compose.compose_cli()
    if cli is None:
        pytest.skip("neither 'docker compose' (plugin) nor 'docker-compose' is installed; structural check only")
    return cli


def test_client_validates_file():
    ok, output = check_compose.run_cli_check(COMPOSE_FILE, client_or_skip())
    assert ok, output


def test_client_rejects_broken_file(tmp_path):
    # Proves the client really validates here, so the test above means something.
    cli = client_or_skip()
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_FILE.read_text().replace(
        "condition: service_completed_successfully", "condition: service_finished"))
    ok, output = check_compose.run_cli_check(broken, cli)
    assert not ok
    assert "service_finished" in output
