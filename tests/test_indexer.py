"""The catalog indexing job: manifest validation, near-duplicate removal, shard
assignment, the folder swap, and one end-to-end run on real catalog photos.

Models: the end-to-end test uses the trained models in models/ when all of
them exist. CI has the real ones. On a development machine before training
finishes, it falls back to the small smoke-trained models in /tmp/smoke-models.
"""

from __future__ import annotations

import json
import subprocess
import sys

import hnswlib
import httpx
import numpy as np
import pytest
from PIL import Image

from helpers_index import REPO_ROOT, SMOKE_MODELS, ShardProcess, models_dir, unit_vectors, wait_for_smoke_models
from services.indexer import job
from services.indexer.adapters import main as adapters_main
from services.indexer.indexfiles import IndexGroup, assign_shards, publish, staging_folder, write_index_folder
from services.indexer.manifest import read_manifest
from shared.routing import read_routing
from shared.wire import encode_vector

# --- manifest -------------------------------------------------------------------


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photos" / "shirt.jpg"
    path.parent.mkdir()
    Image.new("RGB", (60, 80), (200, 30, 30)).save(path)
    return path


def write_csv(path, header: str, lines: list[str]):
    path.write_text("\n".join([header] + lines) + "\n", encoding="utf-8")
    return path


def test_manifest_csv_skips_and_counts_bad_rows(tmp_path, photo):
    header = "id,image_path,product_type,gender,colour,usage,title"
    manifest = write_csv(tmp_path / "m.csv", header, [
        f"1,{photo},Tshirts,Men,Red,Casual,Red tee",
        "2,photos/shirt.jpg,Shirts,women,Blue,,",              # relative path, lower-case gender, blanks
        f"3,{photo},Tshirts,,Red,Casual,no gender",
        f"4,{photo},Spacesuits,Men,Red,Casual,unknown type",
        f"5,{photo},Socks,Men,Red,Casual,ignored type",
        f"6,{photo},Ties,Men,Red,Formal,a tie",
        f"7,{photo},Tshirts,Martian,Red,Casual,unknown gender",
        f"8,{tmp_path}/nowhere.jpg,Tshirts,Men,Red,Casual,no image",
        f"1,{photo},Tshirts,Men,Red,Casual,duplicate id",
        ",,,,,,",
    ])
    report = read_manifest(manifest)
    assert [row.product_id for row in report.rows] == ["1", "2", "6"]
    assert report.rows_read == 10
    assert report.skipped == {
        "missing field gender": 1, "unknown product type": 1, "not a search target": 1,
        "unknown gender": 1, "image file missing": 1,
        "duplicate id": 1, "missing field id": 1,
    }
    second = report.rows[1]
    assert second.image_path == photo
    assert second.gender == "women"
    assert second.usage == ""
    assert (second.high_level, second.fine, second.index_key) == ("top", "shirt", "top/shirt/women")


def test_manifest_jsonl_survives_broken_lines(tmp_path, photo, caplog):
    good = {"id": "10", "image_path": str(photo), "product_type": "Jeans", "gender": "Unisex", "colour": "Blue", "usage": "Casual", "title": "Jeans"}
    lines = [json.dumps(good), "{broken json", "[1, 2]", "", json.dumps({**good, "id": "11", "product_type": None})]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = read_manifest(manifest)
    assert [(r.product_id, r.index_key) for r in report.rows] == [("10", "bottom/jeans/unisex")]
    assert report.skipped == {"unparsable row": 2, "missing field product_type": 1}
    assert "row 2 skipped: unparsable row" in caplog.text


def test_manifest_limit_and_suffix(tmp_path, photo):
    manifest = write_csv(tmp_path / "m.csv", "id,image_path,product_type,gender", [f"{i},{photo},Tshirts,Men" for i in range(5)])
    assert len(read_manifest(manifest, limit=3).rows) == 3
    with pytest.raises(ValueError, match="must end in .csv or .jsonl"):
        read_manifest(manifest.rename(tmp_path / "m.txt"))


# --- near-duplicates, shards, publishing ----------------------------------------------


def with_duplicates(seed: int = 5):
    """60 random vectors plus planted near-copies forming three groups."""
    vectors = unit_vectors(60, 64, seed)
    ids = [str(100 + i) for i in range(60)]
    rng = np.random.default_rng(seed)
    planted = {"9": 3, "1000": 3, "20": 10, "300": 40}  # copy id -> original row
    for copy_id, original in planted.items():
        noisy = vectors[original] + rng.normal(0, 0.005, 64).astype(np.float32)
        vectors = np.vstack([vectors, noisy / np.linalg.norm(noisy)])
        ids.append(copy_id)
    return ids, vectors


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "hnsw graph"])
def test_dedup_keeps_lowest_id_per_component(monkeypatch, exact):
    if not exact:
        monkeypatch.setattr(job, "EXACT_DEDUP_LIMIT", 0)
    ids, vectors = with_duplicates()
    kept = {ids[i] for i in job.deduplicate(ids, vectors, 0.02)}
    # Groups {103, 9, 1000} -> "9" (numeric order), {110, 20} -> "20", {140, 300} -> "140".
    assert len(kept) == 60 + 4 - 4
    assert {"9", "20", "140"} <= kept
    assert not {"103", "1000", "110", "300"} & kept


def test_dedup_threshold_zero_and_distinct_vectors_keep_all():
    ids, vectors = with_duplicates()
    assert job.deduplicate(ids, vectors, 0.0) == list(range(len(ids)))
    assert len(job.deduplicate(ids[:60], vectors[:60], 0.02)) == 60


def test_assign_shards_balances_by_count():
    assignment = assign_shards({"a": 100, "b": 60, "c": 50, "d": 10}, ["shard-0", "shard-1"])
    assert assignment == {"a": "shard-0", "b": "shard-1", "c": "shard-1", "d": "shard-0"}


def test_publish_replaces_only_a_finished_index_folder(tmp_path):
    out = tmp_path / "index"
    group = IndexGroup("top/tshirt/men", ["1", "2"], unit_vectors(2, 8, 1), "v1")
    for version in ("old", "new"):
        staging = staging_folder(out)
        write_index_folder(staging, [group], 1, version, {"top": "v1"}, {"top": 8})
        publish(staging, out)
        assert read_routing(out).detector_version == version
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]

    unrelated = tmp_path / "notes"
    unrelated.mkdir()
    (unrelated / "keep.txt").write_text("mine")
    staging = staging_folder(unrelated)
    with pytest.raises(FileExistsError, match="not an index folder"):
        publish(staging, unrelated)
    assert (unrelated / "keep.txt").read_text() == "mine"


# --- end to end -----------------------------------------------------------------


@pytest.fixture(scope="module")
def models():
    folder = models_dir()
    if folder == SMOKE_MODELS and not wait_for_smoke_models():
        pytest.skip("no trained models in models/ and the smoke models in /tmp/smoke-models are not finished")
    return folder


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, models):
    """Index the first 12 apparel products of the catalog, plus a planted duplicate and a bad row."""
    work = tmp_path_factory.mktemp("indexer")
    manifest = work / "manifest.jsonl"
    assert adapters_main(["--out", str(manifest), "--limit", "12"]) == 0
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(rows) == 12 and all(row["image_path"].startswith("/") for row in rows)
    # The same photo under a higher id is a duplicate; a missing photo is a bad row.
    extra = [{**rows[0], "id": "99999999"}, {**rows[1], "id": "99999998", "image_path": str(work / "missing.jpg")}]
    with open(manifest, "a", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in extra)
    out = work / "index"
    result = subprocess.run(
        [sys.executable, "-m", "services.indexer", "--manifest", str(manifest), "--out", str(out),
         "--models", str(models), "--shards", "2", "--threads", "1"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return {"out": out, "rows": rows, "stdout": result.stdout, "models": models}


def test_end_to_end_outputs(indexed):
    out, rows = indexed["out"], indexed["rows"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows_read"] == 14
    assert summary["skipped"] == {"image file missing": 1}
    assert summary["duplicates_removed"] == 1
    assert summary["indexed"] == 12
    assert "Index written to" in indexed["stdout"]

    products = [json.loads(line) for line in (out / "products.jsonl").read_text().splitlines()]
    assert sorted(p["product_id"] for p in products) == sorted(row["id"] for row in rows)
    for product in products:
        assert product["box_source"] in ("detected", "foreground", "whole photo")
        x1, y1, x2, y2 = product["box"]
        assert x2 > x1
        assert y2 > y1
        assert product["index_key"] == f"{product['high_level']}/{product['fine_class']}/{product['gender']}"


def test_end_to_end_routing_and_indices(indexed):
    out = indexed["out"]
    raw = json.loads((out / "routing.json").read_text())
    assert set(raw) == {"version", "created", "detector_version", "model_versions", "embedding_dimensions", "shards", "keys"}
    routing = read_routing(out)
    assert routing.shards == ["shard-0", "shard-1"]
    assert {route.shard for route in routing.keys.values()} == {"shard-0", "shard-1"}
    products = [json.loads(line) for line in (out / "products.jsonl").read_text().splitlines()]
    assert sum(route.count for route in routing.keys.values()) == len(products)
    for key, route in routing.keys.items():
        category = key.split("/")[0]
        assert route.model_version == routing.model_versions[category]
        assert route.dimension == routing.embedding_dimensions[category]
        sidecar = json.loads((out / route.file).with_suffix(".json").read_text())
        assert sidecar["key"] == key
        assert sidecar["count"] == route.count
        assert len(sidecar["ids"]) == route.count
        assert {p["product_id"] for p in products if p["index_key"] == key} == set(sidecar["ids"])
        index = hnswlib.Index(space="cosine", dim=route.dimension)
        index.load_index(str(out / route.file))
        assert index.get_current_count() == route.count


def test_end_to_end_index_serves_from_a_shard(indexed, tmp_path):
    out = indexed["out"]
    routing = read_routing(out)
    mine = routing.keys_of("shard-1")
    shard = ShardProcess(out, "shard-1", tmp_path / "shard.log")
    try:
        shard.wait_ready()
        listed = httpx.get(f"{shard.url}/keys", timeout=10).json()["keys"]
        assert {key: entry["count"] for key, entry in listed.items()} == {key: route.count for key, route in mine.items()}
        key, route = next(iter(mine.items()))
        query = {"vector": encode_vector(unit_vectors(1, route.dimension, 3)[0]), "keys": [key], "k": 5}
        hits = httpx.post(f"{shard.url}/search", json={"queries": [query]}, timeout=30).json()["results"][0]["hits"]
        assert len(hits) == min(5, route.count)
    finally:
        shard.stop()


def test_job_keeps_non_index_folder(tmp_path, models):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("")
    (tmp_path / "keep.txt").write_text("mine")
    code = job.main(["--manifest", str(manifest), "--out", str(tmp_path), "--models", str(models)])
    assert code == 1
    assert (tmp_path / "keep.txt").exists()


def test_dedup_needs_same_brand():
    vectors = np.tile(np.array([[1.0, 0.0, 0.0]], np.float32), (3, 1))
    ids = ["1", "2", "3"]
    brands = [job.brand_of("Timberland Men Black Wallet"), job.brand_of("timberland Men Black Wallets"), job.brand_of("Reid & Taylor Men Black Wallet")]
    assert job.deduplicate(ids, vectors, 0.02, brands) == [0, 2]
    assert job.deduplicate(ids, vectors, 0.02) == [0]


def test_job_with_detector_ensemble(tmp_path, models):
    manifest = tmp_path / "manifest.jsonl"
    assert adapters_main(["--out", str(manifest), "--limit", "3"]) == 0
    out = tmp_path / "index"
    code = job.main(["--manifest", str(manifest), "--out", str(out), "--models", str(models), "--detector-ensemble", "--threads", "1"])
    assert code == 0
    routing = json.loads((out / "routing.json").read_text())
    assert "+ensemble-nms:" in routing["detector_version"]
    assert json.loads((out / "summary.json").read_text())["indexed"] == 3
