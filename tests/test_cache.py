"""The answer cache against the machine's real Redis on 127.0.0.1:6379, and its
fallback to the in-process cache when Redis cannot be reached."""

import asyncio
import uuid

import redis

from services.gateway.cache import AnswerCache
from shared.processes import free_port

REDIS_URL = "redis://127.0.0.1:6379/15"


def test_redis_cache_round_trip():
    async def scenario():
        cache = AnswerCache(REDIS_URL, ttl=30, local_capacity=0, timeout=1.0)
        key = f"test:{uuid.uuid4().hex}"
        assert await cache.get(key) is None
        await cache.set(key, b"answer")
        assert await cache.get(key) == b"answer"
        await cache.close()
        return key

    key = asyncio.run(scenario())
    client = redis.Redis.from_url(REDIS_URL)
    assert 0 < client.ttl(key) <= 30  # stored in Redis itself, with its expiry
    client.delete(key)


def test_unreachable_redis_falls_back_to_memory():
    async def scenario():
        cache = AnswerCache(f"redis://127.0.0.1:{free_port()}/0", ttl=30, local_capacity=4, timeout=0.2)
        await cache.set("key", b"value")
        value = await cache.get("key")
        await cache.close()
        return value

    assert asyncio.run(scenario()) == b"value"


def test_zero_ttl_disables_caching():
    async def scenario():
        cache = AnswerCache(None, ttl=0, local_capacity=4, timeout=0.2)
        await cache.set("key", b"value")
        return await cache.get("key")

    assert asyncio.run(scenario()) is None
