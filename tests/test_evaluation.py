"""The quality evaluation: metric functions on hand-computed cases, and a
smoke run of the command on a handful of real photos and catalog products
(real models, a real catalog index, a real fleet on loopback ports)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from evaluation.retrieval import Query, QueryOutcome, agreement_preference, match_detections, summarise
from shared import datasets, taxonomy
from tests.small_data import small_dataset_copy
from shared.ensemble import nms_fusion, weighted_box_fusion
from shared.inference import Detection
from shared.metrics import Detections, mean_average_precision, precision_at_k, reciprocal_rank

# --- metrics on hand-computed cases --------------------------------------------


def test_map_two_photos_hand_computed():
    # Photo 1: one true box, found at 0.9, plus a false box at 0.8.
    # Photo 2: one true box, found at 0.7. Ranked: TP, FP, TP.
    # Recall 0.5, 0.5, 1.0; precision 1, 0.5, 0.667; the all-point envelope
    # gives AP = 0.5 * 1 + 0.5 * 2/3.
    truths = [
        Detections(np.array([[0, 0, 10, 10]], np.float32), np.array([0])),
        Detections(np.array([[20, 20, 40, 40]], np.float32), np.array([0])),
    ]
    predictions = [
        Detections(np.array([[0, 0, 10, 10], [50, 50, 60, 60]], np.float32), np.array([0, 0]), np.array([0.9, 0.8], np.float32)),
        Detections(np.array([[21, 21, 40, 40]], np.float32), np.array([0]), np.array([0.7], np.float32)),
    ]
    overall, per_label = mean_average_precision(predictions, truths, [0, 1])
    assert per_label == pytest.approx({0: 0.5 + 0.5 * 2 / 3})
    assert overall == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_map_low_iou_is_a_miss():
    truths = [Detections(np.array([[0, 0, 10, 10]], np.float32), np.array([0]))]
    predictions = [Detections(np.array([[5, 5, 15, 15]], np.float32), np.array([0]), np.array([0.9], np.float32))]
    overall, _ = mean_average_precision(predictions, truths, [0])
    assert overall == 0.0


def test_precision_at_k_counts_missing_results():
    relevant = [True, False, True]
    assert precision_at_k(relevant, 1) == 1.0
    assert precision_at_k(relevant, 3) == pytest.approx(2 / 3)
    assert precision_at_k(relevant, 5) == pytest.approx(0.4)


def test_reciprocal_rank():
    assert reciprocal_rank([False, False, True]) == pytest.approx(1 / 3)
    assert reciprocal_rank([True]) == 1.0
    assert reciprocal_rank([False, False]) == 0.0
    assert reciprocal_rank([]) == 0.0


def make_query(high_level: str = "bottom", colour: str | None = "blue", box=(0, 0, 10, 10)) -> Query:
    return Query("p1", "jeans", high_level, np.asarray(box, np.float32), frozenset({"Jeans"}), colour)


def outcome(types_and_colours: list[tuple[str, str | None]], query: Query | None = None) -> QueryOutcome:
    return QueryOutcome(query or make_query(), [(t, c, str(i)) for i, (t, c) in enumerate(types_and_colours)])


def test_preference_type_first_then_colour():
    first = [
        outcome([("Jeans", "blue")] * 3 + [("Shorts", "blue")] * 2),   # 3 types
        outcome([("Jeans", "blue")] * 2 + [("Shorts", "red")] * 3),    # 2 types, 2 colours
        outcome([("Jeans", "red")] * 5),                               # equal on both
    ]
    second = [
        outcome([("Jeans", "blue")] * 2 + [("Shorts", "blue")] * 3),   # 2 types
        outcome([("Jeans", "red")] * 2 + [("Shorts", "blue")] * 3),    # 2 types, 3 colours
        outcome([("Jeans", "red")] * 5),
    ]
    assert agreement_preference(first, second) == {"a": 1, "b": 1, "tie": 1}


def test_preference_looks_at_top_five_only():
    first = [outcome([("Shorts", None)] * 5 + [("Jeans", "blue")] * 5)]
    second = [outcome([("Shorts", None)] * 10)]
    assert agreement_preference(first, second) == {"a": 0, "b": 0, "tie": 1}


def test_summary_counts_misses_and_colours():
    found = outcome([("Jeans", "blue")] * 5 + [("Shorts", "red")] * 5)
    missed = QueryOutcome(make_query(colour=None), [], found=False)
    summary = summarise([found, missed])
    assert summary["type_precision_at_10"] == pytest.approx(0.25)
    assert summary["type_precision_at_1"] == pytest.approx(0.5)
    assert summary["colour_agreement_at_10"] == pytest.approx(0.5)
    assert summary["colour_queries"] == 1
    assert summary["mrr"] == pytest.approx(0.5)
    assert summary["found"] == pytest.approx(0.5)


def test_match_detections_needs_class_and_iou():
    queries = [make_query("bottom", box=(0, 0, 10, 10)), make_query("top", box=(0, 20, 10, 30))]
    items = [
        {"box": [0, 0, 10, 10], "class": "top", "score": 0.9},      # right place, wrong class
        {"box": [0, 0, 10, 9], "class": "bottom", "score": 0.8},    # IoU 0.9
        {"box": [0, 25, 10, 35], "class": "top", "score": 0.7},     # IoU 1/3
    ]
    assert match_detections(queries, items) == [1, None]


def test_match_detections_one_to_one():
    queries = [make_query(box=(0, 0, 10, 10)), make_query(box=(1, 0, 11, 10))]
    items = [{"box": [0, 0, 10, 10], "class": "bottom", "score": 0.9}]
    assert match_detections(queries, items) == [0, None]


def test_weighted_box_fusion_averages_and_demotes():
    run_a = [Detection(np.array([0, 0, 10, 10], np.float32), "top", 0.9), Detection(np.array([50, 50, 60, 60], np.float32), "bag", 0.6)]
    run_b = [Detection(np.array([2, 0, 12, 10], np.float32), "top", 0.3)]
    fused = weighted_box_fusion([run_a, run_b])
    by_label = {d.label: d for d in fused}
    assert by_label["top"].box == pytest.approx([0.5, 0, 10.5, 10])
    assert by_label["top"].score == pytest.approx(0.6)
    # Seen by one run of two: half its score.
    assert by_label["bag"].score == pytest.approx(0.3)


def test_nms_fusion_keeps_best_per_class():
    run_a = [Detection(np.array([0, 0, 10, 10], np.float32), "top", 0.6)]
    run_b = [Detection(np.array([1, 0, 11, 10], np.float32), "top", 0.8), Detection(np.array([1, 0, 11, 10], np.float32), "dress", 0.5)]
    fused = nms_fusion([run_a, run_b], iou_threshold=0.6, max_detections=10)
    assert [(d.label, d.score) for d in fused] == [("top", 0.8), ("dress", 0.5)]


def test_relevant_types_of_street_labels():
    assert taxonomy.relevant_article_types("pants") == {"Trousers", "Jeans", "Track Pants", "Capris"}
    assert "Tshirts" in taxonomy.relevant_article_types("t-shirt")
    assert taxonomy.relevant_article_types("blouse+blazer") >= {"Tops", "Jackets"}
    assert taxonomy.relevant_article_types("bracelet") == frozenset()


# --- smoke run on real photos ------------------------------------------------------

REQUIRED_NUMBERS = [
    "detection.map50", "detection.map50_95", "detection_colorful.map50", "detection_colorful.map50_95",
    "detection_ensemble.map50", "detection_ensemble.map50_95",
    "wearer.catalog_accuracy",
] + [
    f"retrieval.{source}.{figure}"
    for source in ("ground_truth", "detected")
    for figure in ("type_precision_at_1", "type_precision_at_5", "type_precision_at_10", "colour_agreement_at_10", "mrr")
]


def lookup(report: dict, dotted: str):
    value = report
    for part in dotted.split("."):
        assert isinstance(value, dict) and part in value, f"{dotted}: {part} missing"
        value = value[part]
    return value


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory) -> dict:
    from evaluation.run import main

    root = tmp_path_factory.mktemp("eval")
    data = small_dataset_copy(root / "data")
    code = main(["--datasets", str(data), "--split", "all", "--out", str(root / "reports"), "--cache-dir", str(root / "cache")])
    assert code == 0
    report = json.loads((root / "reports" / "quality.json").read_text())
    report["_folder"] = str(root / "reports")
    return report


def test_smoke_report_has_required_numbers(smoke_report):
    for key in REQUIRED_NUMBERS:
        value = lookup(smoke_report, key)
        assert isinstance(value, float), f"{key} is {value!r}"
        assert 0.0 <= value <= 1.0, f"{key} is {value}"


def test_smoke_report_per_class_entries(smoke_report):
    for section in ("detection", "detection_colorful", "detection_ensemble"):
        for name in taxonomy.HIGH_LEVEL_CLASSES:
            assert "map50" in lookup(smoke_report, f"{section}.per_class.{name}")
    for category in ("top", "bottom", "footwear", "bag"):
        entry = lookup(smoke_report, f"classification.{category}")
        assert "catalog_accuracy" in entry
        assert "street_accuracy" in entry
    assert isinstance(lookup(smoke_report, "classification.top.catalog_accuracy"), float)


def test_smoke_fleet_matches_in_process(smoke_report):
    assert lookup(smoke_report, "retrieval.fleet_equals_in_process") is True
    assert lookup(smoke_report, "retrieval.fleet_check.photos") == 3


def test_smoke_ranking_options_present(smoke_report):
    assert set(lookup(smoke_report, "retrieval.top_fine_classes")) == {"1", "2", "3"}
    assert "0" in lookup(smoke_report, "retrieval.colour_reranking")
    assert set(lookup(smoke_report, "retrieval.min_item_score")) == {"0.3", "0.4", "0.5"}
    assert "hnsw_recall_at_10" in smoke_report["retrieval"]


def test_smoke_markdown_and_figures(smoke_report):
    folder = Path(smoke_report["_folder"])
    markdown = (folder / "quality.md").read_text()
    assert "## Retrieval" in markdown
    assert (folder / "figures" / "quality-detection-pr.png").stat().st_size > 0
    assert (folder / "figures" / "quality-confusion-top-catalog.png").exists()


def test_eval_rejects_missing_layout(tmp_path):
    from evaluation.run import main

    (tmp_path / datasets.CCP).mkdir()
    assert main(["--datasets", str(tmp_path), "--split", "all", "--out", str(tmp_path / "reports"), "--no-fleet"]) == 2


def test_ablation_merges_into_report(smoke_report, tmp_path):
    from evaluation.ablation import main as ablation_main

    # Two "variants" that are the committed top classifier: every query ties.
    folder = Path(smoke_report["_folder"])
    models = Path(__file__).resolve().parent.parent / "models"
    for variant in ("V1", "V2"):
        (tmp_path / "variants" / variant / "classifiers").mkdir(parents=True)
        os.symlink(models / "classifiers" / "top", tmp_path / "variants" / variant / "classifiers" / "top")
    data = Path(smoke_report["dataset_root"])
    code = ablation_main(["--datasets", str(data), "--split", "all", "--variants", str(tmp_path / "variants"),
                          "--out", str(folder), "--cache-dir", str(folder.parent / "cache")])
    assert code == 0
    report = json.loads((folder / "quality.json").read_text())
    assert isinstance(lookup(report, "ablation.V1.type_precision_at_10"), float)
    assert lookup(report, "ablation.V1.type_precision_at_10") == lookup(report, "ablation.V2.type_precision_at_10")
    counts = lookup(report, "ablation.preference.V2_vs_V1")
    assert counts["a"] == 0
    assert counts["b"] == 0
    assert counts["tie"] > 0
    assert "## Ablation" in (folder / "quality.md").read_text()


def test_ensemble_rejects_unknown_fusion():
    from shared.ensemble import EnsembleDetector

    with pytest.raises(ValueError, match="fusion must be one of nms, wbf"):
        EnsembleDetector(None, fusion="mean")  # type: ignore[arg-type]
