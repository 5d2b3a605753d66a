"""The benchmark runner on its small settings: every section runs against real
services, models and photos, and the report carries every headline key.
Nothing here checks speed: the figures of a small run mean little."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.small_data import small_dataset_copy

MODELS = Path(__file__).resolve().parent.parent / "models"

HEADLINE_KEYS = (
    "fleet_vs_in_process_p50", "p99_over_p50_at_70_percent", "search_p50_ms", "peak_searches_per_second",
    "batch_speedup", "hnsw_memory_vs_formula", "int8_speedup", "micro_batching_throughput_gain",
    "replicas_vs_threads_throughput",
)


@pytest.fixture(scope="module")
def bench_report(tmp_path_factory) -> tuple[dict, Path]:
    from benchmarks.run import main

    root = tmp_path_factory.mktemp("bench")
    data = small_dataset_copy(root / "data")
    out = root / "reports"
    code = main(["--small", "--datasets", str(data), "--out", str(out), "--cache-dir", str(root / "cache"),
                 "--work-dir", str(root / "work"), "--serving-models", str(MODELS)])
    assert code == 0
    return json.loads((out / "bench.json").read_text()), out


def test_bench_writes_headline_keys(bench_report):
    report, _ = bench_report
    for key in HEADLINE_KEYS:
        assert isinstance(report.get(key), float), f"{key} is {report.get(key)!r}"
        assert report[key] > 0, key
    assert "hnsw_qps_vs_exact_at_1m" in report
    assert "int8_type_precision_change_points" in report


def test_bench_fleet_levels_and_stages(bench_report):
    report, _ = bench_report
    fleet = report["fleet"]
    assert [level["concurrency"] for level in fleet["closed_loop"]] == [1, 2]
    for level in fleet["closed_loop"]:
        assert level["latency_ms"]["p50"] <= level["latency_ms"]["p99"]
    for stage in ("gateway.detect", "gateway.classify", "gateway.search", "detector.detect", "classifier.classify"):
        assert stage in fleet["stage_ms"], sorted(fleet["stage_ms"])


def test_bench_markdown_and_figures(bench_report):
    _, out = bench_report
    markdown = (out / "bench.md").read_text()
    for heading in ("## Targets", "## Search through the fleet", "## Classifier service", "## int8"):
        assert heading in markdown
    assert (out / "figures" / "bench-latency.png").stat().st_size > 0
    assert (out / "figures" / "bench-hnsw.png").stat().st_size > 0
