"""Import the scripts under deploy/ for tests without putting deploy/ on sys.path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def load_deploy_module(name: str):
    """Import deploy/<name>.py as deploy_<name>: tests/fleet.py is another module called fleet."""
    key = f"deploy_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, REPO_ROOT / "deploy" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]
