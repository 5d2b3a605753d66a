"""The index shard, run for real by uvicorn in a subprocess on 127.0.0.1 and
queried over HTTP, on small index folders written by the indexer's own writer."""

from __future__ import annotations

import json
import shutil

import httpx
import numpy as np
import pytest

from helpers_index import ShardProcess, build_index_dir, unit_vectors
from services.index_shard.store import ShardLoadError, load_shard
from services.indexer.indexfiles import IndexGroup
from shared.wire import encode_vector

MEN, UNISEX, JEANS = "top/tshirt/men", "top/tshirt/unisex", "bottom/jeans/women"
DIM, SMALL_DIM = 32, 16
MAX_K = 50


@pytest.fixture(scope="module")
def vectors() -> dict[str, np.ndarray]:
    return {MEN: unit_vectors(3000, DIM, 1), UNISEX: unit_vectors(200, DIM, 2), JEANS: unit_vectors(5, SMALL_DIM, 3)}


def groups_of(vectors: dict[str, np.ndarray]) -> list[IndexGroup]:
    return [IndexGroup(key, [f"{key.split('/')[1]}-{i}" for i in range(len(v))], v, "test-model") for key, v in vectors.items()]


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, vectors):
    folder = tmp_path_factory.mktemp("index")
    build_index_dir(folder, groups_of(vectors))
    return folder


@pytest.fixture(scope="module")
def shard(index_dir, tmp_path_factory):
    process = ShardProcess(index_dir, "shard-0", tmp_path_factory.mktemp("logs") / "shard.log", max_k=str(MAX_K))
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def search(shard: ShardProcess, queries: list[dict]) -> httpx.Response:
    return httpx.post(f"{shard.url}/search", json={"queries": queries}, timeout=30)


def test_recall_at_10_against_brute_force(shard, vectors):
    data = vectors[MEN]
    queries = unit_vectors(100, DIM, 7)
    response = search(shard, [{"vector": encode_vector(q), "keys": [MEN], "k": 10} for q in queries])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["shard"] == "shard-0"
    assert "search" in body["timings_ms"]
    exact = np.argsort(1.0 - queries @ data.T, axis=1)[:, :10]
    found = 0
    for truth, result in zip(exact, body["results"]):
        hits = result["hits"]
        assert len(hits) == 10
        distances = [hit["distance"] for hit in hits]
        assert distances == sorted(distances)
        found += len({f"tshirt-{i}" for i in truth} & {hit["product_id"] for hit in hits})
    assert found / exact.size >= 0.95


def test_returned_distance_is_cosine_distance(shard, vectors):
    query = unit_vectors(1, DIM, 8)[0]
    hit = search(shard, [{"vector": encode_vector(query), "keys": [MEN], "k": 1}]).json()["results"][0]["hits"][0]
    label = int(hit["product_id"].split("-")[1])
    assert hit["distance"] == pytest.approx(1.0 - float(vectors[MEN][label] @ query), abs=1e-4)


def test_merges_two_keys_nearest_first(shard, vectors):
    # A unisex product itself as the query: it must come first, then the
    # nearest of both keys in one ascending list.
    query = vectors[UNISEX][0]
    response = search(shard, [{"vector": encode_vector(query), "keys": [MEN, UNISEX], "k": 30}])
    assert response.status_code == 200, response.text
    hits = response.json()["results"][0]["hits"]
    assert len(hits) == 30
    assert hits[0]["product_id"] == "tshirt-0"
    assert hits[0]["key"] == UNISEX
    assert hits[0]["distance"] == pytest.approx(0.0, abs=1e-4)
    assert [h["distance"] for h in hits] == sorted(h["distance"] for h in hits)
    assert {h["key"] for h in hits} == {MEN, UNISEX}
    labelled = [(MEN, f"tshirt-{i}") for i in range(3000)] + [(UNISEX, f"tshirt-{i}") for i in range(200)]
    union = np.concatenate([vectors[MEN], vectors[UNISEX]])
    exact = {labelled[i] for i in np.argsort(1.0 - union @ query)[:30]}
    assert len(exact & {(h["key"], h["product_id"]) for h in hits}) >= 27


def test_k_above_index_size_returns_what_exists(shard):
    response = search(shard, [{"vector": encode_vector(unit_vectors(1, SMALL_DIM, 9)[0]), "keys": [JEANS], "k": 20}])
    assert response.status_code == 200, response.text
    assert len(response.json()["results"][0]["hits"]) == 5


def test_k_equal_to_max_k_is_filled(shard):
    # ef (64 by default) is not what limits k: hnswlib searches max(ef, k) candidates.
    response = search(shard, [{"vector": encode_vector(unit_vectors(1, DIM, 10)[0]), "keys": [MEN], "k": MAX_K}])
    assert len(response.json()["results"][0]["hits"]) == MAX_K


def test_several_queries_answered_in_order(shard, vectors):
    queries = [vectors[MEN][5], vectors[MEN][6]]
    results = search(shard, [{"vector": encode_vector(q), "keys": [MEN], "k": 1} for q in queries]).json()["results"]
    assert [r["hits"][0]["product_id"] for r in results] == ["tshirt-5", "tshirt-6"]


def test_unknown_key_is_404_naming_it(shard):
    response = search(shard, [{"vector": encode_vector(np.ones(DIM)), "keys": [MEN, "dress/dress/women"], "k": 5}])
    assert response.status_code == 404
    assert "dress/dress/women" in response.json()["detail"]
    assert MEN not in response.json()["detail"]


@pytest.mark.parametrize(
    "query, words",
    [
        ({"vector": encode_vector(np.ones(DIM + 1)), "keys": [MEN], "k": 5}, ["33", "dimension 32"]),
        ({"vector": encode_vector(np.ones(DIM)), "keys": [JEANS], "k": 5}, ["dimension 16"]),
        ({"vector": "not base64!!", "keys": [MEN], "k": 5}, ["base64"]),
        ({"vector": "AAAAAAA=", "keys": [MEN], "k": 5}, ["float32"]),
        ({"vector": encode_vector(np.ones(DIM)), "keys": [MEN], "k": 0}, ["k is 0"]),
        ({"vector": encode_vector(np.ones(DIM)), "keys": [MEN], "k": MAX_K + 1}, [f"between 1 and {MAX_K}"]),
        ({"vector": encode_vector(np.ones(DIM)), "keys": [], "k": 5}, ["no keys"]),
    ],
    ids=["long vector", "dimension of other key", "bad base64", "partial float", "k zero", "k above max", "no keys"],
)
def test_bad_query_is_400_naming_the_problem(shard, query, words):
    response = search(shard, [query])
    assert response.status_code == 400, response.text
    for word in words:
        assert word in response.json()["detail"]


def test_no_queries_and_malformed_body_are_rejected(shard):
    assert search(shard, []).status_code == 400
    response = httpx.post(f"{shard.url}/search", json={"queries": [{"keys": [MEN]}]}, timeout=10)
    assert response.status_code == 422
    assert "vector" in response.text


def test_keys_and_common_routes(shard):
    keys = httpx.get(f"{shard.url}/keys", timeout=10).json()
    assert keys["keys"] == {
        MEN: {"count": 3000, "dimension": DIM, "model_version": "test-model"},
        UNISEX: {"count": 200, "dimension": DIM, "model_version": "test-model"},
        JEANS: {"count": 5, "dimension": SMALL_DIM, "model_version": "test-model"},
    }
    response = httpx.get(f"{shard.url}/healthz", headers={"X-Request-ID": "abc123"}, timeout=10)
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == "abc123"
    assert 'stage="search"' in httpx.get(f"{shard.url}/metrics", timeout=10).text


# --- failing to start ------------------------------------------------------------


@pytest.fixture
def small_index(tmp_path):
    folder = tmp_path / "index"
    build_index_dir(folder, [
        IndexGroup(MEN, [f"m{i}" for i in range(50)], unit_vectors(50, 8, 11), "v1"),
        IndexGroup(JEANS, [f"j{i}" for i in range(30)], unit_vectors(30, 8, 12), "v1"),
    ], model_version="v1")
    return folder


def edit_json(path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def assert_start_fails(folder, tmp_path, words: list[str]) -> None:
    process = ShardProcess(folder, "shard-0", tmp_path / "refused.log")
    code = process.wait_exit(60)
    log = process.log_text()
    assert code != 0, log
    for word in words:
        assert word in log


def test_start_fails_on_truncated_index(small_index, tmp_path):
    path = small_index / "indices/top/tshirt/men.bin"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert_start_fails(small_index, tmp_path, ["cannot start", str(path)])


def test_start_fails_on_dimension_mismatch(small_index, tmp_path):
    edit_json(small_index / "routing.json", lambda r: r["keys"][JEANS].update(dimension=16))
    assert_start_fails(small_index, tmp_path, ["cannot start", "dimension 8", "routing.json has 16"])


def test_start_fails_on_model_version_mismatch(small_index, tmp_path):
    edit_json(small_index / "indices/top/tshirt/men.json", lambda s: s.update(model_version="v2"))
    assert_start_fails(small_index, tmp_path, ["cannot start", "model version v2", "routing.json has v1"])


# The remaining start failures take the same code path, so they are checked in process.


def test_load_fails_without_routing(tmp_path):
    with pytest.raises(ShardLoadError, match="routing.json not found"):
        load_shard(tmp_path, "shard-0", 64)


def test_load_fails_on_invalid_routing(small_index):
    (small_index / "routing.json").write_text("{not json")
    with pytest.raises(ShardLoadError, match="not valid JSON"):
        load_shard(small_index, "shard-0", 64)
    (small_index / "routing.json").write_text(json.dumps({"version": 1}))
    with pytest.raises(ShardLoadError, match="invalid"):
        load_shard(small_index, "shard-0", 64)


def test_load_fails_for_shard_without_keys(small_index):
    with pytest.raises(ShardLoadError, match="no key to shard 'shard-7'"):
        load_shard(small_index, "shard-7", 64)


def test_load_fails_without_index_file(small_index):
    (small_index / "indices/bottom/jeans/women.bin").unlink()
    with pytest.raises(ShardLoadError, match="women.bin of key bottom/jeans/women not found"):
        load_shard(small_index, "shard-0", 64)


def test_load_fails_on_count_mismatch(small_index):
    edit_json(small_index / "routing.json", lambda r: r["keys"][MEN].update(count=49))
    with pytest.raises(ShardLoadError, match="50 ids but routing.json has count 49"):
        load_shard(small_index, "shard-0", 64)


def test_load_accepts_valid_folder(small_index):
    loaded = load_shard(small_index, "shard-0", 64)
    assert {key: index.count for key, index in loaded.items()} == {MEN: 50, JEANS: 30}
    copy = small_index.parent / "copy"
    shutil.copytree(small_index, copy)
    assert load_shard(copy, "shard-0", 64)[MEN].search(unit_vectors(50, 8, 11)[3], 1)[0][0] == "m3"
