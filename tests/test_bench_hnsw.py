"""The HNSW scaling benchmark on a small configuration: result keys, sane values,
the figure and the Markdown section. No timing is asserted, because the test
machine's cores may be shared."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.hnsw_scaling import plot_hnsw_scaling, render_hnsw_markdown, run_hnsw_scaling

SIZES = (2_000, 5_000)
EF_VALUES = (10, 80)
SIZE_KEYS = ("build_seconds", "build_rate", "memory_bytes", "formula_bytes", "memory_vs_formula", "exact_qps", "ef_results")


@pytest.fixture(scope="module")
def result() -> dict:
    return run_hnsw_scaling(sizes=SIZES, dimension=64, queries=32, ef_values=EF_VALUES, threads=2, seed=0, min_timing_seconds=0.0)


def test_result_top_level_keys(result):
    for key in ("sizes", "hnsw_memory_vs_formula", "hnsw_qps_vs_exact_at_1m", "largest_size", "generator", "gaussian_contrast"):
        assert key in result, key
    assert result["largest_size"] == max(SIZES)
    assert "clustered" in result["generator"]
    assert [entry["size"] for entry in result["sizes"]] == list(SIZES)


def test_result_is_json_serialisable(result):
    assert json.loads(json.dumps(result))["largest_size"] == max(SIZES)


def test_size_entries_are_sane(result):
    for entry in result["sizes"]:
        for key in SIZE_KEYS:
            assert key in entry, (entry["size"], key)
        assert entry["build_seconds"] > 0
        assert entry["build_rate"] > 0
        assert entry["memory_bytes"] > 0
        assert entry["formula_bytes"] > 0
        assert entry["memory_vs_formula"] > 0
        assert entry["exact_qps"] > 0
        assert [row["ef"] for row in entry["ef_results"]] == list(EF_VALUES)


def test_recall_bounded_and_grows_with_ef(result):
    for entry in [*result["sizes"], result["gaussian_contrast"]]:
        recalls = [row["recall_at_10"] for row in entry["ef_results"]]
        for recall in recalls:
            assert 0.0 <= recall <= 1.0, (entry["size"], entry["data"], recalls)
        assert recalls[-1] >= recalls[0], (entry["size"], entry["data"], recalls)
        for row in entry["ef_results"]:
            assert row["qps"] > 0


def test_gaussian_contrast_at_smallest_size(result):
    contrast = result["gaussian_contrast"]
    assert contrast["data"] == "gaussian"
    assert contrast["size"] == min(SIZES)


def test_formula_is_near_measured_memory(result):
    # Loose bounds: the formula follows hnswlib 0.8.0's layout, and small
    # indices carry the fixed 2.5 MiB of label-operation locks.
    ratio = result["hnsw_memory_vs_formula"]
    assert 0.5 < ratio < 2.0, ratio
    assert ratio == result["sizes"][-1]["memory_vs_formula"]


def test_qps_ratio_names_its_size(result):
    ratio = result["hnsw_qps_vs_exact_at_1m"]
    note = result.get("hnsw_qps_vs_exact_at_1m_note", "")
    assert ratio is None or (math.isfinite(ratio) and ratio > 0), ratio
    assert f"{max(SIZES):,}" in note, note


def test_plot_writes_png(result, tmp_path):
    figure = tmp_path / "figures" / "bench-hnsw.png"
    plot_hnsw_scaling(result, figure)
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_mentions_each_size(result):
    markdown = render_hnsw_markdown(result, "figures/bench-hnsw.png")
    assert markdown.startswith("## HNSW scaling")
    for size in SIZES:
        assert f"{size:,}" in markdown, size
    assert "(figures/bench-hnsw.png)" in markdown


def test_sizes_must_exceed_k():
    with pytest.raises(ValueError, match="larger than k"):
        run_hnsw_scaling(sizes=(5,), dimension=16, queries=4, ef_values=(10,))
