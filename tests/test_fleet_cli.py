"""The fleet CLI's guards, with no models: nothing here starts a real service.

State (PID file, log) goes to a temporary folder, so a fleet a developer has
running is never touched. The start-and-stop tests run honcho on a stub
Procfile whose processes serve /readyz on free loopback ports.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from shared.taxonomy import CLASSIFIER_CATEGORIES
from tests.deploy_modules import load_deploy_module

REPO_ROOT = Path(__file__).resolve().parent.parent
FLEET = REPO_ROOT / "deploy" / "fleet.py"



fleet = load_deploy_module("fleet")

STUB = """
import argparse, http.server, json, time
parser = argparse.ArgumentParser()
parser.add_argument("--host"); parser.add_argument("--port", type=int)
parser.add_argument("--ready-after", type=float, help="seconds; negative: never ready")
args = parser.parse_args()
started = time.monotonic()

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ready = 0 <= args.ready_after <= time.monotonic() - started
        body = json.dumps({"ready": ready, "detail": "ready" if ready else "loading"}).encode()
        self.send_response(200 if ready else 503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

http.server.HTTPServer((args.host, args.port), Handler).serve_forever()
"""


def run_fleet(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(FLEET), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
                          env={**os.environ, **(env or {})})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def state(tmp_path: Path) -> list[str]:
    return ["--state-dir", str(tmp_path / "state")]


@pytest.fixture
def stub_fleet(tmp_path: Path):
    """Write a two-process stub Procfile and env file; yield the CLI options for them."""

    def make(ready_after: float) -> list[str]:
        stub = tmp_path / "stub.py"
        stub.write_text(STUB)
        (tmp_path / "Procfile").write_text(textwrap.dedent(f"""\
            first: {sys.executable} {stub} --host $STUB_HOST --port $FIRST_PORT --ready-after 0
            second: {sys.executable} {stub} --host $STUB_HOST --port $SECOND_PORT --ready-after {ready_after}
        """))
        (tmp_path / "stub.env").write_text(f"STUB_HOST=127.0.0.1\nFIRST_PORT={free_port()}\nSECOND_PORT={free_port()}\n")
        return ["--procfile", str(tmp_path / "Procfile"), "--env-file", str(tmp_path / "stub.env"),
                "--state-dir", str(tmp_path / "state")]

    made: list[list[str]] = []
    yield lambda ready_after: made.append(make(ready_after)) or made[-1]
    for options in made:  # stop anything a failed test left running
        run_fleet("down", *options, "--grace", "2")


def test_config_services_on_loopback():
    services = fleet.load_services(fleet.Paths(fleet.DEFAULT_PROCFILE, fleet.DEFAULT_ENV_FILE, fleet.DEFAULT_STATE_DIR))
    names = [service.name for service in services]
    assert names[0] == "detector"
    assert "gateway" in names
    assert {"shard-0", "shard-1"} <= set(names)
    assert {name for name in names if name.startswith("classifier-")} == {f"classifier-{c}" for c in CLASSIFIER_CATEGORIES}
    assert {service.host for service in services} == {"127.0.0.1"}
    assert len({service.port for service in services}) == len(services)


def test_env_file_matches_honcho():
    environ = pytest.importorskip("honcho.environ", reason="honcho is not installed")
    assert fleet.read_env_file(fleet.DEFAULT_ENV_FILE) == environ.parse(fleet.DEFAULT_ENV_FILE.read_text())


def test_down_without_fleet_noop(state, tmp_path):
    result = run_fleet("down", *state)
    assert result.returncode == 0, result.stderr
    assert "nothing to stop" in result.stdout
    assert not (tmp_path / "state" / "run" / "fleet.pid").exists()


def test_down_removes_stale_pid(state, tmp_path):
    finished = subprocess.Popen(["true"])
    finished.wait()  # its pid now names no process
    pid_file = tmp_path / "state" / "run" / "fleet.pid"
    pid_file.parent.mkdir(parents=True)
    pid_file.write_text(f"{finished.pid}\n")
    result = run_fleet("down", *state)
    assert result.returncode == 0, result.stderr
    assert "stale PID file" in result.stdout
    assert "nothing to stop" in result.stdout
    assert not pid_file.exists()


def test_down_spares_unrelated_process(state, tmp_path):
    other = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        pid_file = tmp_path / "state" / "run" / "fleet.pid"
        pid_file.parent.mkdir(parents=True)
        pid_file.write_text(f"{other.pid}\n")
        result = run_fleet("down", *state)
        assert result.returncode == 0, result.stderr
        assert "not a running fleet" in result.stdout
        assert other.poll() is None, "down signalled a process it did not start"
    finally:
        other.kill()
        other.wait()


def test_up_rejects_busy_port(state, tmp_path):
    # The gateway's port, as the Procfile and fleet.env give it.
    services = fleet.load_services(fleet.Paths(fleet.DEFAULT_PROCFILE, fleet.DEFAULT_ENV_FILE, fleet.DEFAULT_STATE_DIR))
    port = next(service.port for service in services if service.name == "gateway")
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", port))
        holder.listen()
    except OSError:
        pass  # already taken by something else: the guard must refuse all the same
    try:
        result = run_fleet("up", *state, "--timeout", "5")
        assert result.returncode == 2, result.stdout + result.stderr
        assert f"port already in use: {port} (gateway)" in result.stderr
        assert not (tmp_path / "state" / "run" / "fleet.pid").exists()
        assert not (tmp_path / "state" / "log" / "fleet.log").exists()
    finally:
        holder.close()
        run_fleet("down", *state, "--grace", "2")


def test_up_wait_down_cycle(stub_fleet, tmp_path):
    options = stub_fleet(1.5)
    result = run_fleet("up", *options, "--timeout", "30")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "waiting" in result.stdout
    assert "all 2 services ready" in result.stdout
    pid = int((tmp_path / "state" / "run" / "fleet.pid").read_text())
    children = fleet.descendants(pid)
    assert children, "honcho started no processes"

    again = run_fleet("up", *options)
    assert again.returncode == 2
    assert f"already running (pid {pid})" in again.stderr

    waited = run_fleet("wait", *options, "--timeout", "5")
    assert waited.returncode == 0, waited.stdout

    down = run_fleet("down", *options, "--grace", "5")
    assert down.returncode == 0, down.stderr
    assert not (tmp_path / "state" / "run" / "fleet.pid").exists()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(fleet.process_start_time(p) == s for p, s in children.items()):
        time.sleep(0.1)
    assert not any(fleet.process_start_time(p) == s for p, s in children.items()), "a fleet process outlived down"
    assert not alive(pid)


def test_environment_overrides_env_file(stub_fleet, tmp_path):
    options = stub_fleet(0)
    moved_port = free_port()
    result = run_fleet("up", *options, "--timeout", "30", env={"SECOND_PORT": str(moved_port)})
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        assert "all 2 services ready" in result.stdout
        # The stub listens on the port from the environment, not the file's.
        with socket.create_connection(("127.0.0.1", moved_port), timeout=5):
            pass
        assert f"SECOND_PORT={moved_port}" in (tmp_path / "state" / "run" / "fleet.env").read_text()
    finally:
        run_fleet("down", *options, "--grace", "5")


def test_environment_override_with_space_rejected(stub_fleet):
    options = stub_fleet(0)
    result = run_fleet("up", *options, "--timeout", "5", env={"STUB_HOST": "127.0.0.1 --reload"})
    assert result.returncode == 2
    assert "STUB_HOST='127.0.0.1 --reload' from the environment must be a plain value" in result.stderr


def test_up_timeout_stops_fleet(stub_fleet, tmp_path):
    options = stub_fleet(-1)
    result = run_fleet("up", *options, "--timeout", "2", "--grace", "2")
    assert result.returncode == 1
    assert "not ready after 2 s: second [503 loading]" in result.stdout
    assert "last lines of" in result.stdout
    assert "second.1 started" in result.stdout
    assert not (tmp_path / "state" / "run" / "fleet.pid").exists()
    # The stub's port is free again: nothing of the fleet is left listening.
    port = int(dict(line.split("=") for line in (tmp_path / "stub.env").read_text().split())["SECOND_PORT"])
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


def test_up_reports_a_crashed_process(stub_fleet, tmp_path):
    options = stub_fleet(-1)
    procfile = tmp_path / "Procfile"
    procfile.write_text(procfile.read_text() + f"crashing: {sys.executable} -c 'print(\"bad setting\"); raise SystemExit(3)'\n")
    result = run_fleet("up", *options, "--timeout", "30", "--grace", "2")
    assert result.returncode == 1
    assert "honcho exited with code 3 before the fleet was ready" in result.stdout
    assert "exited on their own: crashing.1 (rc=3)" in result.stdout
    # The failed process's own last lines follow, whatever the others logged after it.
    own_lines = result.stdout.split("--- last lines of crashing.1 ---")[1]
    assert "bad setting" in own_lines.split("---")[0]
    assert not (tmp_path / "state" / "run" / "fleet.pid").exists()


def test_up_rejects_zero_timeout(state):
    result = run_fleet("up", *state, "--timeout", "0")
    assert result.returncode == 2
    assert "must be above 0" in result.stderr
