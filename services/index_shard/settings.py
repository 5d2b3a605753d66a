from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings, repo_path


class ShardSettings(ServiceSettings):
    """Index shard settings, read from ``SHARD_*`` environment variables.

    ``SHARD_NAME`` picks the keys of ``routing.json`` this process serves.
    ``threads`` is the number of searches run at the same time.
    """

    model_config = SettingsConfigDict(env_prefix="SHARD_")

    name: str = Field(..., min_length=1, description="shard name in routing.json, e.g. shard-0")
    index_dir: Path = Field(repo_path("var/index"), description="index folder written by the indexing job")
    # ef 64 is the smallest measured ef with recall@10 of 0.99 or more at a
    # million synthetic 512-D items (0.999; ef 40 gave 0.989), and it gave
    # 0.999 against exact search on the real catalog (reports/bench.md,
    # reports/quality.md).
    ef: int = Field(64, ge=1, le=10_000, description="HNSW query ef; raised to k when a query asks for more")
    max_k: int = Field(100, ge=1, le=10_000, description="maximum k of one query")
    max_queries: int = Field(256, ge=1, le=10_000, description="maximum queries in one request")
