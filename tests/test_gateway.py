"""The search fleet end to end: real services as processes on loopback ports,
real models, a small real catalog indexed by the indexing job, real Redis.

Tests run in file order: normal searches and bad input first, then faults,
with the detector stopped last.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import httpx
import pytest
from PIL import Image

from shared import datasets, taxonomy
from shared.processes import REPO, free_port, start_redis, start_search_fleet

MODELS = Path(os.environ.get("TEST_MODELS_DIR", REPO / "models"))
CATEGORIES = ("top", "bottom", "footwear", "bag")
PRODUCTS_PER_KEY = 2
# Held-out street photos: 0004 shows an open coat, trousers and shoes.
PHOTO_IDS = ("0004", "0001")


def photo_bytes(photo_id: str, quality: int = 92) -> bytes:
    """A street photo re-encoded at a chosen quality: each quality gives other
    bytes, so tests that must miss the response cache use their own."""
    image = Image.open(datasets.datasets_dir() / datasets.CCP / "photos" / f"{photo_id}.jpg").convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("catalog")
    rows = datasets.read_catalog(datasets.datasets_dir())
    chosen = []
    for category in CATEGORIES:
        for fine in taxonomy.FINE_CLASSES[category]:
            # Both main genders, so gender routing has indices to choose from.
            for gender in ("women", "men"):
                chosen += [r for r in rows if r.fine == fine and r.gender == gender][:PRODUCTS_PER_KEY]
    manifest = folder / "manifest.jsonl"
    with open(manifest, "w") as handle:
        for row in chosen:
            handle.write(json.dumps({
                "id": row.product_id, "image_path": str(row.path), "product_type": row.article_type,
                "gender": row.gender, "colour": row.base_colour, "usage": row.usage or "", "title": row.title,
            }) + "\n")
    out = folder / "index"
    subprocess.run(
        [sys.executable, "-m", "services.indexer", "--manifest", str(manifest), "--out", str(out),
         "--models", str(MODELS), "--shards", "2", "--threads", "2"],
        cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, timeout=600,
    )
    return out


@pytest.fixture(scope="module")
def fleet(index_dir, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("fleet-logs")
    redis_port = free_port()
    redis_process = start_redis(redis_port, log_dir)

    fleet = start_search_fleet(index_dir, MODELS, log_dir, f"redis://127.0.0.1:{redis_port}/0")
    fleet.redis_process = redis_process  # type: ignore[attr-defined]

    yield fleet

    fleet.stop_all()
    redis_process.kill()
    redis_process.wait(timeout=10)


@pytest.fixture(scope="module")
def gateway(fleet) -> str:
    return fleet.services["gateway"].url


def post_photo(gateway: str, data: bytes, **options) -> httpx.Response:
    fields = {k: str(v) for k, v in options.items()}
    return httpx.post(f"{gateway}/search", files={"image": ("photo.jpg", data, "image/jpeg")}, data=fields, timeout=60)


# --- searches ---------------------------------------------------------------------


def test_search_returns_items_of_their_own_class(gateway):
    data = photo_bytes(PHOTO_IDS[0])
    response = post_photo(gateway, data)
    assert response.status_code == 200, response.text
    answer = response.json()
    width, height = Image.open(io.BytesIO(data)).size
    assert answer["image"] == {"width": width, "height": height}
    assert answer["degraded"] == []
    searched = [item for item in answer["items"] if item["results"]]
    assert searched, answer["items"]
    for item in answer["items"]:
        x1, y1, x2, y2 = item["box"]
        assert 0 <= x1 < x2 <= width
        assert 0 <= y1 < y2 <= height
    for item in searched:
        for result in item["results"]:
            assert taxonomy.high_level_of_fine(result["fine_class"]) == item["class"]
        distances = [result["distance"] for result in item["results"]]
        assert distances == sorted(distances)
        assert len({result["product_id"] for result in item["results"]}) == len(item["results"])
    assert answer["model_versions"]["detector"]
    for stage in ("detect", "classify", "search", "total"):
        assert stage in answer["timings_ms"]


def test_search_answer_is_cached(gateway):
    data = photo_bytes(PHOTO_IDS[1], quality=91)
    first = post_photo(gateway, data, results_per_item=3)
    second = post_photo(gateway, data, results_per_item=3)
    assert first.status_code == second.status_code == 200
    assert first.json()["cached"] is False
    assert second.json()["cached"] is True
    assert second.json()["items"] == first.json()["items"]
    assert second.json()["request_id"] != first.json()["request_id"]


def test_search_accepts_json_and_raw_bodies(gateway):
    data = photo_bytes(PHOTO_IDS[0], quality=90)
    as_json = httpx.post(f"{gateway}/search", json={"image_base64": base64.b64encode(data).decode(), "results_per_item": 2}, timeout=60)
    assert as_json.status_code == 200, as_json.text
    raw = httpx.post(f"{gateway}/search?results_per_item=2", content=data, headers={"content-type": "image/jpeg"}, timeout=60)
    assert raw.status_code == 200, raw.text
    for answer in (as_json.json(), raw.json()):
        assert all(len(item["results"]) <= 2 for item in answer["items"])


def test_search_options_filter_items(gateway):
    data = photo_bytes(PHOTO_IDS[0], quality=89)
    answer = post_photo(gateway, data, classes="footwear", gender="men", max_items=1).json()
    assert len(answer["items"]) <= 1
    for item in answer["items"]:
        assert item["class"] == "footwear"
        assert item["genders_searched"] == ["men", "unisex"]
        assert item["gender_source"] == "request"
        assert all(result["gender"] in ("men", "unisex") for result in item["results"])


def test_search_region_replaces_detection(gateway):
    data = photo_bytes(PHOTO_IDS[0], quality=88)
    answer = post_photo(gateway, data, region="100,100,400,500", region_class="top").json()
    assert len(answer["items"]) == 1
    assert answer["items"][0]["class"] == "top"
    assert answer["items"][0]["box"] == [100.0, 100.0, 400.0, 500.0]


def test_request_id_is_returned(gateway):
    response = post_photo(gateway, photo_bytes(PHOTO_IDS[1], quality=87), results_per_item=1)
    assert response.headers["X-Request-ID"]
    custom = httpx.post(f"{gateway}/search", files={"image": ("p.jpg", photo_bytes(PHOTO_IDS[1], quality=87), "image/jpeg")},
                        data={"results_per_item": "1"}, headers={"X-Request-ID": "test-request-42"}, timeout=60)
    assert custom.headers["X-Request-ID"] == "test-request-42"
    assert custom.json()["request_id"] == "test-request-42"


def test_products_routes(gateway, index_dir):
    product_id = json.loads((index_dir / "products.jsonl").read_text().splitlines()[0])["product_id"]
    record = httpx.get(f"{gateway}/products/{product_id}", timeout=10)
    assert record.status_code == 200
    assert record.json()["product_id"] == product_id
    assert "image_path" not in record.json()
    image = httpx.get(f"{gateway}/products/{product_id}/image", timeout=10)
    assert image.status_code == 200
    assert Image.open(io.BytesIO(image.content)).size[0] > 0
    missing = httpx.get(f"{gateway}/products/no-such-product", timeout=10)
    assert missing.status_code == 404
    assert "not found" in missing.json()["detail"]


def test_every_service_exposes_metrics(fleet):
    for name, service in fleet.services.items():
        assert httpx.get(f"{service.url}/healthz", timeout=5).status_code == 200, name
        metrics = httpx.get(f"{service.url}/metrics", timeout=5)
        assert "apparel_stage_seconds" in metrics.text, name


def test_internal_services_reject_bad_raw_bodies(fleet):
    detector = fleet.services["detector"].url
    bad_shape = httpx.post(f"{detector}/detect", content=b"\x00" * 30,
                           headers={"content-type": "application/octet-stream", "X-Image-Shape": "tall,wide"}, timeout=10)
    expect_error(bad_shape, 400, "x-image-shape")
    short_body = httpx.post(f"{detector}/detect", content=b"\x00" * 30,
                            headers={"content-type": "application/octet-stream", "X-Image-Shape": "64,64"}, timeout=10)
    expect_error(short_body, 400, "needs 12288")

    classifier = fleet.services["classifier-top"].url
    size = httpx.get(f"{classifier}/info", timeout=10).json()["input_size"]
    wrong_size = httpx.post(f"{classifier}/classify", content=b"\x00" * (32 * 32 * 3),
                            headers={"content-type": "application/octet-stream", "X-Crop-Size": "32"}, timeout=10)
    expect_error(wrong_size, 400, f"takes {size}x{size}")
    partial_crop = httpx.post(f"{classifier}/classify", content=b"\x00" * (size * size * 3 + 5),
                              headers={"content-type": "application/octet-stream", "X-Crop-Size": str(size)}, timeout=10)
    expect_error(partial_crop, 400, "not a whole number")


# --- bad input ----------------------------------------------------------------------


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A PNG whose header declares 30000x30000 pixels, carried in a few KB."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * ((width + 7) // 8 + 1) * 64, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def encoded(image: Image.Image, kind: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind)
    return buffer.getvalue()


def expect_error(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    detail = response.json()["detail"].lower()
    for word in words:
        assert word in detail, detail


def test_empty_body_rejected(gateway):
    expect_error(post_photo(gateway, b""), 400, "no image data")
    expect_error(httpx.post(f"{gateway}/search", content=b"", headers={"content-type": "image/jpeg"}, timeout=10), 400, "no image data")


def test_not_an_image_rejected(gateway):
    expect_error(post_photo(gateway, b"this is plain text, not a photo"), 415, "not an image")


def test_truncated_jpeg_rejected(gateway):
    data = photo_bytes(PHOTO_IDS[0])
    expect_error(post_photo(gateway, data[: len(data) // 3]), 400, "truncated")


def test_tiny_image_rejected(gateway):
    expect_error(post_photo(gateway, encoded(Image.new("RGB", (1, 1)), "PNG")), 400, "1x1", "at least")


def test_decompression_bomb_rejected(gateway):
    data = bomb_png()
    assert len(data) < 20_000
    expect_error(post_photo(gateway, data), 413, "pixels")


def test_oversized_file_rejected(gateway):
    data = photo_bytes(PHOTO_IDS[0]) + os.urandom(11 * 1024 * 1024)
    expect_error(post_photo(gateway, data), 413, "over the limit")


def test_unsupported_format_rejected(gateway):
    gif = encoded(Image.new("RGB", (64, 64), "red"), "GIF")
    expect_error(post_photo(gateway, gif), 415, "gif", "not supported")


def test_wrong_field_name_rejected(gateway):
    response = httpx.post(f"{gateway}/search", files={"file": ("p.jpg", photo_bytes(PHOTO_IDS[0]), "image/jpeg")}, timeout=10)
    expect_error(response, 422, "'image'", "file")


def test_bad_base64_rejected(gateway):
    response = httpx.post(f"{gateway}/search", json={"image_base64": "not base64 at all!"}, timeout=10)
    expect_error(response, 400, "base64")


def test_results_per_item_out_of_range_rejected(gateway):
    data = photo_bytes(PHOTO_IDS[0])
    expect_error(post_photo(gateway, data, results_per_item=0), 422, "results_per_item")
    expect_error(post_photo(gateway, data, results_per_item=500), 422, "results_per_item")


def test_boxes_match_the_detector_on_the_whole_photo(fleet, gateway):
    # The gateway sends the detector a copy scaled to the network's input size
    # and maps the boxes back: they must match the detector's own boxes for
    # the photo sent whole.
    data = photo_bytes(PHOTO_IDS[0], quality=86)
    detector = fleet.services["detector"].url
    direct = httpx.post(f"{detector}/detect", content=data, headers={"content-type": "image/jpeg"}, timeout=60)
    assert direct.status_code == 200, direct.text
    answer = post_photo(gateway, data).json()
    assert answer["items"]
    for item in answer["items"]:
        same_class = [d["box"] for d in direct.json()["items"] if d["label"] == item["class"]]
        gaps = [max(abs(a - b) for a, b in zip(item["box"], box)) for box in same_class]
        assert gaps and min(gaps) <= 2.0, (item, same_class)


def test_detector_info_gives_input_size(fleet):
    info = httpx.get(f"{fleet.services['detector'].url}/info", timeout=10).json()
    card = json.loads((MODELS / "detector" / "card.json").read_text())
    assert (info["input_width"], info["input_height"]) == (card["input"]["width"], card["input"]["height"])
    assert info["model_versions"]["detector"] == card["version"]


def test_region_outside_photo_rejected(gateway):
    expect_error(post_photo(gateway, photo_bytes(PHOTO_IDS[0]), region="0,0,5000,5000", region_class="top"), 422, "outside")


def test_unknown_option_rejected(gateway):
    expect_error(post_photo(gateway, photo_bytes(PHOTO_IDS[0]), colour="red"), 422, "colour", "unknown option")


# --- faults (each with real processes) --------------------------------------------------


def assert_only_top_degraded(answer: dict) -> None:
    """The top classifier is named in ``degraded``; its items have no results, other items do."""
    assert "classifier:top" in answer["degraded"]
    tops = [item for item in answer["items"] if item["class"] == "top"]
    assert tops and all(item["results"] == [] for item in tops)
    assert any(item["results"] for item in answer["items"] if item["class"] != "top")


def test_stopped_classifier_degrades_answer(fleet, gateway):
    fleet.stop("classifier-top")
    try:
        response = post_photo(gateway, photo_bytes(PHOTO_IDS[0], quality=80))
        assert response.status_code == 200, response.text
        assert_only_top_degraded(response.json())
    finally:
        fleet.start("classifier-top")


def test_classifier_of_another_model_degrades_answer(fleet, gateway, tmp_path):
    # The top classifier restarts with a model the catalog was not indexed with.
    other_models = tmp_path / "classifiers"
    shutil.copytree(MODELS / "classifiers" / "top", other_models / "top")
    card_path = other_models / "top" / "card.json"
    card_path.write_text(json.dumps({**json.loads(card_path.read_text()), "version": "not-indexed"}))
    service = fleet.services["classifier-top"]
    original_env = dict(service.env)
    fleet.stop("classifier-top")
    service.env["CLASSIFIER_MODELS_DIR"] = str(other_models)
    fleet.start("classifier-top")
    try:
        response = post_photo(gateway, photo_bytes(PHOTO_IDS[0], quality=81))
        assert response.status_code == 200, response.text
        assert_only_top_degraded(response.json())
    finally:
        fleet.stop("classifier-top")
        service.env.clear()
        service.env.update(original_env)
        fleet.start("classifier-top")


def test_stopped_shard_degrades_answer(fleet, gateway, index_dir):
    shard = json.loads((index_dir / "routing.json").read_text())["shards"][0]
    fleet.stop(shard)
    try:
        response = post_photo(gateway, photo_bytes(PHOTO_IDS[0], quality=79))
        assert response.status_code == 200, response.text
        assert f"shard:{shard}" in response.json()["degraded"]
    finally:
        fleet.start(shard)


def test_stopped_redis_does_not_fail_search(fleet, gateway):
    fleet.redis_process.kill()
    fleet.redis_process.wait(timeout=10)
    for quality in (78, 78):
        response = post_photo(gateway, photo_bytes(PHOTO_IDS[1], quality=quality))
        assert response.status_code == 200, response.text
        assert response.json()["degraded"] == []


def test_stopped_detector_returns_503(fleet, gateway):
    fleet.stop("detector")
    response = post_photo(gateway, photo_bytes(PHOTO_IDS[0], quality=77))
    expect_error(response, 503, "detector")
