"""The response cache: Redis when ``REDIS_URL`` is set, else in-process.

A Redis failure never fails a search: the gateway logs it, falls back to the
in-process cache and retries Redis on a later request.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

import redis.asyncio as redis_asyncio
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# Seconds between two attempts to use Redis after a failure, so an outage
# costs one timeout per interval instead of one per request.
RETRY_INTERVAL_SECONDS = 5.0


class LocalCache:
    """A small LRU of search responses with expiry, for a gateway without Redis."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def get(self, key: str) -> bytes | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires < time.monotonic():
            del self.entries[key]
            return None
        self.entries.move_to_end(key)
        return value

    def set(self, key: str, value: bytes, ttl: int) -> None:
        if self.capacity == 0:
            return
        self.entries[key] = (time.monotonic() + ttl, value)
        self.entries.move_to_end(key)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)


class AnswerCache:
    def __init__(self, redis_url: str | None, ttl: int, local_capacity: int, timeout: float):
        self.ttl = ttl
        self.local = LocalCache(local_capacity)
        self.redis = redis_asyncio.from_url(redis_url, socket_timeout=timeout, socket_connect_timeout=timeout) if redis_url else None
        self.redis_down_until = 0.0
        self.backend = "redis" if self.redis else "in-process"

    def _redis_usable(self) -> bool:
        return self.redis is not None and time.monotonic() >= self.redis_down_until

    def _mark_down(self, error: Exception) -> None:
        if self.redis_down_until <= time.monotonic():
            log.warning("redis unavailable, using the in-process cache for %.0f s: %s", RETRY_INTERVAL_SECONDS, error)
        self.redis_down_until = time.monotonic() + RETRY_INTERVAL_SECONDS

    async def get(self, key: str) -> bytes | None:
        if self.ttl == 0:
            return None
        if self._redis_usable():
            try:
                return await self.redis.get(key)  # type: ignore[union-attr]
            except (RedisError, OSError) as error:
                self._mark_down(error)
        return self.local.get(key)

    async def set(self, key: str, value: bytes) -> None:
        if self.ttl == 0:
            return
        if self._redis_usable():
            try:
                await self.redis.set(key, value, ex=self.ttl)  # type: ignore[union-attr]
                return
            except (RedisError, OSError) as error:
                self._mark_down(error)
        self.local.set(key, value, self.ttl)

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
