"""Start, wait for and stop the local fleet that honcho runs from deploy/Procfile.

    python deploy/fleet.py up [--timeout 180]   # start in the background, wait for /readyz
    python deploy/fleet.py wait [--timeout 180] # wait for a fleet that is already starting
    python deploy/fleet.py down [--grace 10]    # SIGTERM, then SIGKILL after the grace period

The services and their ports come from deploy/Procfile and deploy/fleet.env;
nothing here repeats them. Only loopback addresses are polled. Standard library
and httpx only, so it runs from any environment that has the services'
dependencies.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PROCFILE = REPO_ROOT / "deploy" / "Procfile"
DEFAULT_ENV_FILE = REPO_ROOT / "deploy" / "fleet.env"
DEFAULT_STATE_DIR = REPO_ROOT / "var"
LOOPBACK = "127.0.0.1"

PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")
VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
POLL_SECONDS = 1.0
REPORT_SECONDS = 10.0
LOG_TAIL_LINES = 40


class FleetError(Exception):
    """A guard rejected the command, or the fleet did not become ready; the message gives the reason."""


@dataclass(frozen=True)
class Service:
    name: str
    host: str
    port: int

    @property
    def readyz(self) -> str:
        return f"http://{self.host}:{self.port}/readyz"


@dataclass(frozen=True)
class Paths:
    procfile: Path
    env_file: Path
    state_dir: Path

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "run" / "fleet.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "log" / "fleet.log"


# ---------------------------------------------------------------- config


def read_env_file(path: Path) -> dict[str, str]:
    """Read plain KEY=value lines, skipping blank lines and '#' comments.

    This matches honcho's parser for values without spaces, quotes or '#',
    which is all fleet.env uses."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name.strip()):
            raise FleetError(f"{path}:{number}: invalid line {raw!r}, expected KEY=value")
        values[name.strip()] = value.strip()
    return values


def expand(text: str, variables: dict[str, str]) -> str:
    """Expand $NAME and ${NAME} as the shell running the Procfile line would."""
    return VARIABLE.sub(lambda m: variables.get(m.group(1) or m.group(2), ""), text)


def option(command: str, flag: str) -> str | None:
    match = re.search(rf"(?:^|\s){re.escape(flag)}[=\s]+(\S+)", command)
    return match.group(1) if match else None


def fleet_settings(env_file: Path) -> dict[str, str]:
    """Return the env file's values, each replaced by the environment's value of
    the same name when it is set: ``GATEWAY_PORT=9000 make up`` works without
    editing the file, as with Compose's .env files."""
    settings = read_env_file(env_file)
    for name in settings:
        override = os.environ.get(name)
        if override is None:
            continue
        if re.search(r"[\s'\"#]", override):
            raise FleetError(f"{name}={override!r} from the environment must be a plain value without spaces, quotes or '#'")
        settings[name] = override
    return settings


def load_services(paths: Paths) -> list[Service]:
    """Return the Procfile's processes that listen on a port, with host and port expanded."""
    variables = {**os.environ, **fleet_settings(paths.env_file)}
    services = []
    for line in paths.procfile.read_text().splitlines():
        match = PROCFILE_LINE.match(line)
        if not match:
            continue
        name, command = match.group(1), expand(match.group(2), variables)
        port_text = option(command, "--port")
        if port_text is None and "--port" not in command.split():
            continue  # a process without a port has no /readyz to poll
        host = option(command, "--host") or LOOPBACK
        if host != LOOPBACK:
            raise FleetError(f"{name}: --host {host} is not allowed, because the local fleet listens on {LOOPBACK} only")
        if port_text is None or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise FleetError(f"{name}: invalid port {port_text or ''!r} after --port; check that its variable is set in {paths.env_file.name}")
        services.append(Service(name, host, int(port_text)))
    if not services:
        raise FleetError(f"{paths.procfile} names no process with --port")
    return services


# ---------------------------------------------------------------- processes


def process_start_time(pid: int) -> str | None:
    """Return field 22 of /proc/PID/stat, which distinguishes a live process from a later one with the same id."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def is_fleet_process(pid: int) -> bool:
    """True when pid is alive and is the honcho this tool started."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    try:
        leads_group = os.getpgid(pid) == pid
    except ProcessLookupError:
        return False
    return leads_group and any(part.endswith(b"honcho") for part in cmdline)


def read_pid(paths: Paths) -> int | None:
    try:
        return int(paths.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def descendants(root: int) -> dict[int, str]:
    """Return every process below root, with its start time. Honcho starts each Procfile
    process in a session of its own, so signalling honcho's group misses them:
    they are found here, before honcho exits and they lose their parent."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: dict[int, str] = {}
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            started = process_start_time(child)
            if started is not None:
                found[child] = started
                stack.append(child)
    return found


def signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def stop_fleet(pid: int, grace: float) -> None:
    """SIGTERM honcho's group and each service's group, then SIGKILL what is left after grace."""
    tree = descendants(pid)
    groups = {pid}
    for child in tree:
        try:
            groups.add(os.getpgid(child))
        except ProcessLookupError:
            pass
    groups.discard(os.getpgrp())  # never signal the group this tool itself runs in
    for group in groups:
        signal_group(group, signal.SIGTERM)

    def alive() -> list[int]:
        survivors = [p for p, started in tree.items() if process_start_time(p) == started]
        if process_start_time(pid) is not None:
            survivors.append(pid)
        return survivors

    deadline = time.monotonic() + grace
    while alive() and time.monotonic() < deadline:
        reap(pid)
        time.sleep(0.2)
    left = alive()
    if left:
        print(f"still running after {grace:g} s, sending SIGKILL to {len(left)} processes")
        for survivor in left:
            # Kill each survivor's whole group (its children too), but only groups
            # of this fleet: an emptied group's id may since have been reused.
            try:
                group = os.getpgid(survivor)
            except ProcessLookupError:
                continue
            if group in groups:
                signal_group(group, signal.SIGKILL)
            try:
                os.kill(survivor, signal.SIGKILL)
            except ProcessLookupError:
                pass
    reap(pid)


def reap(pid: int) -> None:
    """Collect honcho's exit status when this process is its parent (up's own cleanup)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def busy_ports(services: list[Service]) -> list[Service]:
    """Services whose port cannot be bound now. SO_REUSEADDR as uvicorn sets it,
    so a port that only lingers in TIME_WAIT does not count as taken."""
    busy = []
    for service in services:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((service.host, service.port))
            except OSError as error:
                if error.errno != errno.EADDRINUSE:
                    raise
                busy.append(service)
    return busy


def log_tail(paths: Paths, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with paths.log_file.open(errors="replace") as log:
            return "".join(deque(log, maxlen=lines))
    except OSError:
        return "(no log)\n"


def exited_processes(paths: Paths) -> dict[str, int]:
    """Return the processes that exited by themselves (not by a signal) and
    their exit codes, from honcho's lines in the log."""
    try:
        text = paths.log_file.read_text(errors="replace")
    except OSError:
        return {}
    return {name: int(code) for name, code in re.findall(r"\| (\S+) stopped \(rc=(\d+)\)", text)}


def process_tail(paths: Paths, name: str, lines: int = LOG_TAIL_LINES) -> str:
    """Return the last lines one process wrote: honcho prefixes each with the
    process name, so the reason a service refused to start is found even after
    the shutdown lines of the others."""
    try:
        with paths.log_file.open(errors="replace") as log:
            own = (line for line in log if re.match(rf"\S+ {re.escape(name)}\s+\| ", line))
            return "".join(deque(own, maxlen=lines))
    except OSError:
        return "(no log)\n"


# ---------------------------------------------------------------- readiness


def probe(client: httpx.Client, service: Service) -> tuple[bool, str]:
    try:
        response = client.get(service.readyz)
    except httpx.ConnectError:
        return False, "not listening"
    except httpx.TimeoutException:
        return False, "timed out"
    except httpx.HTTPError as error:
        return False, type(error).__name__
    if response.status_code == 200:
        return True, "ready"
    try:
        detail = response.json().get("detail", "")
    except ValueError:
        detail = ""
    return False, f"{response.status_code} {detail}".strip()


def wait_ready(services: list[Service], timeout: float, honcho: subprocess.Popen | None = None) -> bool:
    """Poll every /readyz until all answer 200 or timeout passes; print who is still waiting."""
    started = time.monotonic()
    waiting = {service.name: service for service in services}
    last_report = 0.0
    last_names: set[str] = set()
    # Short timeouts: a service that hangs must not stall the poll of the others.
    with httpx.Client(timeout=httpx.Timeout(2.0, connect=1.0), trust_env=False) as client:
        while True:
            states = {}
            for name, service in list(waiting.items()):
                ready, detail = probe(client, service)
                if ready:
                    del waiting[name]
                    print(f"  ready: {name} ({service.host}:{service.port})")
                else:
                    states[name] = detail
            elapsed = time.monotonic() - started
            if not waiting:
                print(f"all {len(services)} services ready after {elapsed:.0f} s")
                return True
            if honcho is not None and honcho.poll() is not None:
                print(f"honcho exited with code {honcho.returncode} before the fleet was ready")
                return False
            if elapsed >= timeout:
                print(f"not ready after {timeout:g} s: " + ", ".join(f"{n} [{d}]" for n, d in states.items()))
                return False
            if set(waiting) != last_names or elapsed - last_report >= REPORT_SECONDS:
                print(f"  waiting ({elapsed:.0f} s): " + ", ".join(f"{n} [{d}]" for n, d in states.items()))
                last_report, last_names = elapsed, set(waiting)
            time.sleep(POLL_SECONDS)


# ---------------------------------------------------------------- commands


def running_pid(paths: Paths) -> int | None:
    """Return the fleet's pid when one runs. A stale PID file is removed with a note."""
    pid = read_pid(paths)
    if pid is None:
        if paths.pid_file.exists():
            print(f"removing unreadable PID file {paths.pid_file}")
            paths.pid_file.unlink()
        return None
    if is_fleet_process(pid):
        return pid
    print(f"removing stale PID file {paths.pid_file} (process {pid} is not a running fleet)")
    paths.pid_file.unlink()
    return None


def command_up(paths: Paths, timeout: float, grace: float) -> int:
    services = load_services(paths)
    pid = running_pid(paths)
    if pid is not None:
        raise FleetError(f"a fleet is already running (pid {pid}); run 'down' first")
    busy = busy_ports(services)
    if busy:
        raise FleetError("port already in use: " + ", ".join(f"{s.port} ({s.name})" for s in busy) + "; stop whatever listens there")

    paths.pid_file.parent.mkdir(parents=True, exist_ok=True)
    paths.log_file.parent.mkdir(parents=True, exist_ok=True)
    # honcho lets its env file win over the environment, so it gets a copy
    # with the environment's overrides written in.
    settings_file = paths.pid_file.parent / "fleet.env"
    settings_file.write_text("".join(f"{name}={value}\n" for name, value in fleet_settings(paths.env_file).items()))
    env = dict(os.environ)
    # The Procfile calls uvicorn by name: find the one beside this interpreter first.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"  # honcho's own lines reach the log at once
    command = [
        sys.executable, "-m", "honcho", "start", "--no-colour",
        "-f", str(paths.procfile), "-e", str(settings_file), "-d", str(REPO_ROOT),
    ]
    with paths.log_file.open("wb") as log:
        honcho = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    paths.pid_file.write_text(f"{honcho.pid}\n")
    print(f"fleet started: honcho pid {honcho.pid}, log {paths.log_file}")
    print(f"waiting up to {timeout:g} s for: " + ", ".join(s.name for s in services))

    try:
        ready = wait_ready(services, timeout, honcho)
    except KeyboardInterrupt:
        ready = False
        print("interrupted")
    if ready:
        return 0
    print(f"--- last lines of {paths.log_file} ---")
    print(log_tail(paths), end="")
    exited = exited_processes(paths)
    if exited:
        # Honcho stops the others with a signal once one exits, so these are the ones that failed.
        print("exited on their own: " + ", ".join(f"{name} (rc={code})" for name, code in exited.items()))
        for name in exited:
            print(f"--- last lines of {name} ---")
            print(process_tail(paths, name), end="")
    print("--- stopping the fleet ---")
    stop_fleet(honcho.pid, grace)
    paths.pid_file.unlink(missing_ok=True)
    return 1


def command_wait(paths: Paths, timeout: float) -> int:
    services = load_services(paths)
    if running_pid(paths) is None:
        print(f"note: no fleet started by this tool ({paths.pid_file} absent); polling anyway")
    if wait_ready(services, timeout):
        return 0
    if paths.log_file.exists():
        print(f"--- last lines of {paths.log_file} ---")
        print(log_tail(paths), end="")
    return 1


def command_down(paths: Paths, grace: float) -> int:
    pid = running_pid(paths)
    if pid is None:
        print("no fleet running; nothing to stop")
        return 0
    print(f"stopping fleet (honcho pid {pid}), SIGKILL after {grace:g} s")
    stop_fleet(pid, grace)
    paths.pid_file.unlink(missing_ok=True)
    print("fleet stopped")
    return 0


def positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--procfile", type=Path, default=DEFAULT_PROCFILE, help="default: %(default)s")
    common.add_argument("--env-file", type=Path, default=DEFAULT_ENV_FILE, help="default: %(default)s")
    common.add_argument("--state-dir", type=Path, default=Path(os.environ.get("FLEET_STATE_DIR", DEFAULT_STATE_DIR)),
                        help="holds run/fleet.pid and log/fleet.log (default: $FLEET_STATE_DIR or %(default)s)")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", parents=[common], help="start the fleet and wait until every service is ready")
    up.add_argument("--timeout", type=positive, default=180.0, help="seconds to wait for readiness (default: %(default)s)")
    up.add_argument("--grace", type=positive, default=10.0, help="seconds between SIGTERM and SIGKILL on failure (default: %(default)s)")
    wait = commands.add_parser("wait", parents=[common], help="wait until every service is ready")
    wait.add_argument("--timeout", type=positive, default=180.0, help="seconds to wait (default: %(default)s)")
    down = commands.add_parser("down", parents=[common], help="stop the fleet")
    down.add_argument("--grace", type=positive, default=10.0, help="seconds between SIGTERM and SIGKILL (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    paths = Paths(args.procfile.resolve(), args.env_file.resolve(), args.state_dir.resolve())
    try:
        if args.command == "up":
            return command_up(paths, args.timeout, args.grace)
        if args.command == "wait":
            return command_wait(paths, args.timeout)
        return command_down(paths, args.grace)
    except (FleetError, OSError) as error:
        print(f"fleet {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
