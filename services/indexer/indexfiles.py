"""Writing the index folder: hnswlib files with sidecars, ``routing.json``, and
the swap of a finished folder into place.

The index shards read exactly what is written here (format in ``shared.routing``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import hnswlib
import numpy as np

from shared.routing import INDEX_SPACE, ROUTING_FILE, ROUTING_VERSION, sidecar_path

log = logging.getLogger("services.indexer.indexfiles")

HNSW_M = 16
HNSW_EF_CONSTRUCTION = 200


@dataclass
class IndexGroup:
    """The vectors of one search index, e.g. ``top/tshirt/men``; ``ids[i]`` is the product of row i."""

    key: str
    ids: list[str]
    vectors: np.ndarray
    model_version: str

    @property
    def dimension(self) -> int:
        return int(self.vectors.shape[1])


def index_file(key: str) -> str:
    """Return the index file of a key, relative to the index folder."""
    return f"indices/{key}.bin"


def write_index(path: Path, group: IndexGroup, threads: int = 1) -> dict:
    """Write one hnswlib index (labels 0..count-1) and its JSON sidecar; return the sidecar."""
    count, dimension = group.vectors.shape
    if count != len(group.ids):
        raise ValueError(f"{group.key}: {count} vectors but {len(group.ids)} ids")
    path.parent.mkdir(parents=True, exist_ok=True)
    index = hnswlib.Index(space=INDEX_SPACE, dim=dimension)
    index.init_index(max_elements=max(count, 1), M=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION)
    index.set_num_threads(threads)
    if count:
        index.add_items(np.ascontiguousarray(group.vectors, dtype=np.float32), np.arange(count))
    index.save_index(str(path))
    sidecar = {
        "key": group.key,
        "dimension": dimension,
        "model_version": group.model_version,
        "count": count,
        "ids": list(group.ids),
    }
    sidecar_path(path).write_text(json.dumps(sidecar), encoding="utf-8")
    return sidecar


def assign_shards(counts: dict[str, int], shards: list[str]) -> dict[str, str]:
    """Assign keys to shards, largest key first to the least-loaded shard."""
    load = {shard: 0 for shard in shards}
    assignment: dict[str, str] = {}
    for key in sorted(counts, key=lambda k: (-counts[k], k)):
        # Ties go to the earlier shard, so the assignment is reproducible.
        shard = min(shards, key=lambda s: (load[s], shards.index(s)))
        assignment[key] = shard
        load[shard] += counts[key]
    return assignment


def write_index_folder(
    folder: Path,
    groups: list[IndexGroup],
    shard_count: int,
    detector_version: str,
    model_versions: dict[str, str],
    embedding_dimensions: dict[str, int],
    threads: int = 1,
) -> dict:
    """Write every index, then ``routing.json`` (last, so its presence means complete)."""
    if shard_count < 1:
        raise ValueError("at least one shard is needed")
    shards = [f"shard-{i}" for i in range(shard_count)]
    assignment = assign_shards({g.key: len(g.ids) for g in groups}, shards)
    idle = [s for s in shards if s not in assignment.values()]
    if idle:
        log.warning("%d keys for %d shards: %s get no key and will not start", len(groups), shard_count, ", ".join(idle))
    keys = {}
    for group in sorted(groups, key=lambda g: g.key):
        relative = index_file(group.key)
        write_index(folder / relative, group, threads)
        keys[group.key] = {
            "shard": assignment[group.key],
            "file": relative,
            "count": len(group.ids),
            "dimension": group.dimension,
            "model_version": group.model_version,
        }
    routing = {
        "version": ROUTING_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "detector_version": detector_version,
        "model_versions": dict(sorted(model_versions.items())),
        "embedding_dimensions": dict(sorted(embedding_dimensions.items())),
        "shards": shards,
        "keys": keys,
    }
    (folder / ROUTING_FILE).write_text(json.dumps(routing, indent=2), encoding="utf-8")
    return routing


def staging_folder(out: Path) -> Path:
    """Return a new, empty folder beside ``out`` (same file system, so rename is atomic)."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    return staging


def check_replaceable(out: Path) -> None:
    """Raise FileExistsError when ``out`` is a non-empty folder other than an earlier index folder."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / ROUTING_FILE).exists())):
        raise FileExistsError(f"{out} exists and is not an index folder (no {ROUTING_FILE}); choose another --out")


def publish(staging: Path, out: Path) -> None:
    """Move a complete staging folder to ``out``; the old folder is removed only afterwards."""
    out = out.resolve()
    check_replaceable(out)
    previous = None
    if out.exists():
        previous = out.parent / f".{out.name}.previous-{os.getpid()}"
        out.rename(previous)
    try:
        staging.rename(out)
    except OSError:
        if previous is not None:
            previous.rename(out)
        raise
    if previous is not None:
        shutil.rmtree(previous)
    log.info("published the index folder %s", out)
