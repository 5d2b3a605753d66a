"""Check docker-compose.yml without a Docker engine.

    python deploy/check_compose.py [--file docker-compose.yml] [--no-cli]

Two checks. The structural one reads the YAML with pyyaml and checks it against what
this fleet needs: every service built or pulled, health checks on every
long-running service, start order by health and by the indexing job, one
classifier per category, declared volumes, no loopback addresses between
containers, and the same services and ports as deploy/Procfile. The CLI one runs
`docker compose config` or Debian's `docker-compose config`, whichever is
installed; both parse and validate a file client-side, with no daemon. Exit 0
when every check that could run passed.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # for shared/ when run as a script

from shared.taxonomy import CLASSIFIER_CATEGORIES  # noqa: E402


def load_fleet():
    """Import deploy/fleet.py as ``deploy_fleet``.

    A plain ``import fleet`` could pick up tests/fleet.py, a different module."""
    name = "deploy_fleet"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "deploy" / "fleet.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while it executes
        spec.loader.exec_module(module)
    return sys.modules[name]


DEFAULT_FILE = REPO_ROOT / "docker-compose.yml"
GATEWAY, DETECTOR, REDIS, INDEXER = "gateway", "detector", "redis", "indexer"
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
BASE_IMAGE = "python:3.11-slim"
REQUIREMENTS = "requirements/serve.txt"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "0.0.0.0", "::1")


def environment(service: dict) -> dict[str, str]:
    """Return a service's environment as a dict, from either the map or the list form."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def volume_entries(service: dict) -> list[tuple[str, str, bool]]:
    """Return (source, target, read_only) for each volume of a service."""
    entries = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            entries.append((str(volume.get("source", "")), str(volume.get("target", "")), bool(volume.get("read_only"))))
            continue
        # The source may hold ${VAR:-default}, whose ':' is not a separator.
        match = re.fullmatch(r"(\$\{[^}]*\}|[^:]+):([^:]+)(?::([a-z,]+))?", str(volume))
        if match is None:
            entries.append(("", str(volume), False))
            continue
        source, target, mode = match.groups()
        entries.append((source, target, "ro" in (mode or "").split(",")))
    return entries


def is_named_volume(source: str) -> bool:
    return bool(source) and not source.startswith((".", "/", "~", "$"))


def url_targets(value: str) -> list[tuple[str, str, int | None]]:
    """Return (label, host, port) for each URL in a "name=url,..." list or a single URL."""
    targets = []
    for part in filter(None, (p.strip() for p in value.split(","))):
        label, _, url = part.rpartition("=") if "=" in part.split("://")[0] else ("", "", part)
        match = re.match(r"^[a-z]+://([^/:]+)(?::(\d+))?", url)
        if match:
            targets.append((label, match.group(1), int(match.group(2)) if match.group(2) else None))
    return targets


def check_dockerfile(name: str, build: dict | str, base: Path) -> list[str]:
    context = base / (build if isinstance(build, str) else build.get("context", "."))
    dockerfile = context / ("Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile"))
    if not context.is_dir():
        return [f"{name}: build context {context} is not a folder"]
    if not dockerfile.is_file():
        return [f"{name}: Dockerfile {dockerfile} does not exist"]
    text = dockerfile.read_text()
    problems = []
    bases = re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)
    if not bases or any(image != BASE_IMAGE for image in bases):
        problems.append(f"{name}: {dockerfile.name} should build FROM {BASE_IMAGE}, found {bases}")
    if REQUIREMENTS not in text:
        problems.append(f"{name}: {dockerfile.name} does not install {REQUIREMENTS}")
    return problems


def check(compose: dict, base: Path = REPO_ROOT, procfile_services: list | None = None) -> list[str]:
    """Return every problem found in a loaded Compose file; an empty list means it passes."""
    services = compose.get("services")
    if not isinstance(services, dict) or not services:
        return ["no services defined"]
    problems: list[str] = []
    declared_volumes = set((compose.get("volumes") or {}).keys())
    one_shot = {name for name, svc in services.items() if svc.get("restart") == "no"}

    for name, svc in services.items():
        if not svc.get("image") and not svc.get("build"):
            problems.append(f"{name}: neither image nor build")
        if svc.get("build"):
            problems.extend(check_dockerfile(name, svc["build"], base))
        if svc.get("restart") is False:
            problems.append(f"{name}: restart is the boolean false; quote it as \"no\"")
        if name not in one_shot:
            health = svc.get("healthcheck") or {}
            if not health.get("test") or health.get("disable"):
                problems.append(f"{name}: long-running service without a healthcheck")

        depends = svc.get("depends_on") or {}
        if isinstance(depends, list):
            problems.append(f"{name}: depends_on is a list, so it names no conditions")
            depends = {dep: {} for dep in depends}
        for dep, options in depends.items():
            condition = (options or {}).get("condition")
            if dep not in services:
                problems.append(f"{name}: depends on {dep}, which is not a service")
            elif condition not in CONDITIONS:
                problems.append(f"{name}: depends on {dep} with condition {condition!r}, not one of {sorted(CONDITIONS)}")
            elif condition == "service_healthy" and not (services[dep].get("healthcheck") or {}).get("test"):
                problems.append(f"{name}: waits for {dep} to be healthy, but {dep} has no healthcheck")
            elif condition == "service_completed_successfully" and dep not in one_shot:
                problems.append(f"{name}: waits for {dep} to complete, but {dep} is not a one-shot job (restart: \"no\")")

        for key, value in environment(svc).items():
            if any(host in value for host in LOOPBACK_NAMES):
                problems.append(f"{name}: {key}={value} points at a loopback address; containers reach each other by service name")

        for source, target, read_only in volume_entries(svc):
            if not source:
                problems.append(f"{name}: volume {target!r} is not in source:target[:mode] form")
            elif is_named_volume(source) and source not in declared_volumes:
                problems.append(f"{name}: volume {source!r} is not declared under top-level volumes")
            elif (source.rstrip("/") == "./models" or "MODELS_DIR" in source) and not read_only:
                problems.append(f"{name}: the models at {source} should be mounted read-only")
            elif source.startswith("${") and "DATASETS_DIR" in source and not read_only:
                problems.append(f"{name}: the dataset mount should be read-only")

        for port in svc.get("ports") or []:
            if not str(port).startswith("127.0.0.1:"):
                problems.append(f"{name}: port {port} is published on every interface, not only 127.0.0.1")

    # The classifiers: one service per category.
    classifiers: dict[str, list[str]] = {}
    for name, svc in services.items():
        category = environment(svc).get("CLASSIFIER_CATEGORY")
        if category is not None:
            classifiers.setdefault(category, []).append(name)
    for category in CLASSIFIER_CATEGORIES:
        if len(classifiers.get(category, [])) != 1:
            problems.append(f"category {category}: {len(classifiers.get(category, []))} classifier services, expected 1")
    for category in set(classifiers) - set(CLASSIFIER_CATEGORIES):
        problems.append(f"classifier services {classifiers[category]} serve unknown category {category!r}")
    shards = [name for name, svc in services.items() if "SHARD_NAME" in environment(svc)]
    if not shards:
        problems.append("no index shard service (none sets SHARD_NAME)")

    # Start order and the volume the job writes.
    for required in (GATEWAY, DETECTOR, REDIS, INDEXER):
        if required not in services:
            problems.append(f"required service {required} is missing")
    if GATEWAY in services:
        depends = services[GATEWAY].get("depends_on") or {}
        depends = depends if isinstance(depends, dict) else {}
        for dep in [DETECTOR, REDIS, *(n for names in classifiers.values() for n in names), *shards]:
            if ((depends.get(dep) or {}).get("condition")) != "service_healthy":
                problems.append(f"{GATEWAY}: should wait for {dep} with condition service_healthy")
        env = environment(services[GATEWAY])
        for key in ("GATEWAY_DETECTOR_URL", "GATEWAY_CLASSIFIER_URLS", "GATEWAY_SHARD_URLS", "REDIS_URL"):
            if key not in env:
                problems.append(f"{GATEWAY}: {key} is not set")
                continue
            for label, host, port in url_targets(env[key]):
                if host not in services:
                    problems.append(f"{GATEWAY}: {key} names host {host}, which is not a service")
                elif port is not None and host != REDIS and environment(services[host]).get("PORT") != str(port):
                    problems.append(f"{GATEWAY}: {key} uses {host}:{port}, but {host} listens on PORT={environment(services[host]).get('PORT')}")
    if INDEXER in services:
        if INDEXER not in one_shot:
            problems.append(f"{INDEXER}: should be a one-shot job with restart: \"no\"")
        written = {s for s, _, ro in volume_entries(services[INDEXER]) if is_named_volume(s) and not ro}
        if not written:
            problems.append(f"{INDEXER}: writes no named volume")
        for name in [*shards, GATEWAY]:
            if name not in services:
                continue
            mounted = {s for s, _, _ in volume_entries(services[name]) if is_named_volume(s)}
            if not mounted & written:
                problems.append(f"{name}: does not mount the volume the {INDEXER} writes ({', '.join(sorted(written)) or 'none'})")
        for name in shards:
            condition = ((services[name].get("depends_on") or {}).get(INDEXER) or {}).get("condition")
            if condition != "service_completed_successfully":
                problems.append(f"{name}: should wait for {INDEXER} with condition service_completed_successfully")

    # The same fleet as the local one: each Procfile process, same name and port.
    for process in procfile_services or []:
        svc = services.get(process.name)
        if svc is None:
            problems.append(f"Procfile process {process.name} has no Compose service of the same name")
        elif environment(svc).get("PORT") != str(process.port):
            problems.append(f"{process.name}: PORT={environment(svc).get('PORT')} in Compose, {process.port} in the Procfile")

    requirements = base / REQUIREMENTS
    if requirements.is_file() and re.search(r"^\s*torch\b", requirements.read_text(), flags=re.MULTILINE | re.IGNORECASE):
        problems.append(f"{REQUIREMENTS} installs torch; serving images must not")
    return problems


def compose_cli() -> list[str] | None:
    """Return the installed client that validates Compose files without a daemon, or None."""
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=30)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy:
        return [legacy]
    return None


def run_cli_check(path: Path, cli: list[str]) -> tuple[bool, str]:
    """Run `config -q`, which parses, interpolates and validates the file against the schema."""
    result = subprocess.run(
        [*cli, "-f", str(path), "--project-directory", str(path.parent), "config", "-q"],
        capture_output=True, text=True, timeout=60, cwd=path.parent,
    )
    return result.returncode == 0, (result.stdout + result.stderr).strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE, help="default: %(default)s")
    parser.add_argument("--no-cli", action="store_true", help="skip the docker compose / docker-compose check")
    args = parser.parse_args(argv)
    path = args.file.resolve()

    compose = yaml.safe_load(path.read_text())
    fleet = load_fleet()
    procfile_services = fleet.load_services(fleet.Paths(fleet.DEFAULT_PROCFILE, fleet.DEFAULT_ENV_FILE, fleet.DEFAULT_STATE_DIR))
    problems = check(compose, path.parent, procfile_services)
    for problem in problems:
        print(f"  problem: {problem}")
    print(f"structure: {'ok' if not problems else f'{len(problems)} problems'} ({len(compose.get('services') or {})} services)")
    failed = bool(problems)

    if not args.no_cli:
        cli = compose_cli()
        if cli is None:
            print("cli: skipped, neither 'docker compose' nor 'docker-compose' is installed")
        else:
            ok, output = run_cli_check(path, cli)
            label = " ".join([Path(cli[0]).name, *cli[1:]])
            print(f"cli: {label} config: {'ok' if ok else 'failed'}")
            if output:
                print(output)
            failed = failed or not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
