"""The routing file of the catalog index: which shard serves which search index.

The indexing job writes ``routing.json`` next to the index files; the index
shards and the gateway read it. The format is version 1:

    {"version": 1, "created": "2026-01-01T00:00:00+00:00",
     "detector_version": "...",
     "model_versions": {"top": "<classifier version>", ...},
     "embedding_dimensions": {"top": 320, ...},
     "shards": ["shard-0", "shard-1"],
     "keys": {"top/tshirt/men": {"shard": "shard-0", "file": "indices/top/tshirt/men.bin",
                                 "count": 123, "dimension": 320, "model_version": "..."}}}

Each index file has a JSON sidecar (same path, ``.json``) holding
``{key, dimension, model_version, count, ids}``, where ``ids[label]`` is the
product id of hnswlib label ``label``.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError, model_validator

ROUTING_FILE = "routing.json"
ROUTING_VERSION = 1
# Every index uses cosine distance, so a query vector need not be normalised.
INDEX_SPACE = "cosine"


class RoutingError(ValueError):
    """The routing file is missing or does not follow the format above."""


class KeyRoute(BaseModel):
    shard: str = Field(min_length=1)
    file: str = Field(min_length=1)
    count: int = Field(ge=0)
    dimension: int = Field(ge=1)
    model_version: str = Field(min_length=1)


class Routing(BaseModel):
    version: int
    created: str
    detector_version: str
    model_versions: dict[str, str]
    embedding_dimensions: dict[str, int]
    shards: list[str] = Field(min_length=1)
    keys: dict[str, KeyRoute]

    @model_validator(mode="after")
    def check_consistent(self) -> "Routing":
        if self.version != ROUTING_VERSION:
            raise ValueError(f"routing version {self.version} is not supported; expected {ROUTING_VERSION}")
        for key, route in self.keys.items():
            if route.shard not in self.shards:
                raise ValueError(f"key {key!r} is assigned to shard {route.shard!r}, which is not in shards {self.shards}")
            if Path(route.file).is_absolute() or ".." in Path(route.file).parts:
                raise ValueError(f"key {key!r} names file {route.file!r}; it must be a path inside the index folder")
        return self

    def keys_of(self, shard: str) -> dict[str, KeyRoute]:
        """Return the keys assigned to one shard."""
        return {key: route for key, route in self.keys.items() if route.shard == shard}


def sidecar_path(index_file: Path) -> Path:
    """Return the path of an index file's JSON sidecar."""
    return index_file.with_suffix(".json")


def read_routing(index_dir: Path) -> Routing:
    """Read and validate ``routing.json`` of an index folder; raises RoutingError."""
    path = Path(index_dir) / ROUTING_FILE
    if not path.is_file():
        raise RoutingError(f"routing file {path} not found; run the indexing job (python -m services.indexer) or check the index folder setting")
    try:
        return Routing.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RoutingError(f"routing file {path} is not valid JSON: {error}") from error
    except ValidationError as error:
        raise RoutingError(f"routing file {path} is invalid: {error}") from error
