"""The index metadata the gateway reads from the index volume: the routing
file (which shard serves which index key) and the product records."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class IndexMetadataError(RuntimeError):
    """Raised when routing.json or products.jsonl is missing or malformed."""


@dataclass
class IndexMetadata:
    routing: dict[str, Any]
    products: dict[str, dict[str, Any]]

    @property
    def version(self) -> str:
        return str(self.routing.get("created", "unknown"))

    def shard_of(self, key: str) -> str | None:
        entry = self.routing["keys"].get(key)
        return entry["shard"] if entry else None

    def has_key(self, key: str) -> bool:
        return key in self.routing["keys"]

    def model_version_of(self, category: str) -> str | None:
        """Return the version of the classifier that embedded this category's products."""
        return self.routing.get("model_versions", {}).get(category)


def load_index_metadata(index_dir: Path) -> IndexMetadata:
    routing_path = index_dir / "routing.json"
    products_path = index_dir / "products.jsonl"
    if not routing_path.exists() or not products_path.exists():
        raise IndexMetadataError(f"no index in {index_dir}: routing.json or products.jsonl is missing; run `make index`")
    try:
        routing = json.loads(routing_path.read_text())
        keys = routing["keys"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise IndexMetadataError(f"{routing_path} is not a valid routing file: {error}") from error
    products: dict[str, dict[str, Any]] = {}
    with open(products_path) as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                products[str(record["product_id"])] = record
            except (json.JSONDecodeError, KeyError) as error:
                raise IndexMetadataError(f"{products_path} line {line_number} is invalid: {error}") from error
    log.info("loaded index metadata: %d keys, %d products, created %s", len(keys), len(products), routing.get("created"))
    return IndexMetadata(routing, products)
