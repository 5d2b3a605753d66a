"""Write ``bench.json`` (every figure, plus the headline ratios at the top
level) and ``bench.md`` (tables and plots) from one benchmark run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# A typical search runs the detector once and a classifier on about four crops.
CROPS_PER_SEARCH = 4
# ONNX Runtime threads of each service in the local fleet (deploy/fleet.env).
SERVICE_THREADS = 1

TARGETS = {
    "fleet_vs_in_process_p50": ("<=", 1.15),
    "p99_over_p50_at_70_percent": ("<=", 2.0),
    "hnsw_qps_vs_exact_at_1m": (">=", 50.0),
    "hnsw_memory_vs_formula": ("<=", 1.2),
    "batch_speedup": (">=", 1.3),
    "int8_speedup": (">=", 1.5),
    "search_p50_ms": ("<=", 100.0),
    "peak_searches_per_second": (">=", 15.0),
}


def int8_search_speedup(speed: dict[str, Any], threads: int = SERVICE_THREADS) -> float | None:
    """Speed-up of one search's model compute: the detector once plus
    ``CROPS_PER_SEARCH`` crops at the mean classifier cost, at batch 1 and
    the thread count the fleet's services run with."""
    key = f"threads_{threads}"
    detector = speed.get("detector", {}).get(key, {}).get("batch_1")
    classifiers = [
        entry[key]["batch_1"] for name, entry in speed.items() if name.startswith("classifiers/") and "batch_1" in entry.get(key, {})
    ]
    if not detector or not classifiers:
        return None
    mean = lambda key: sum(entry[key] for entry in classifiers) / len(classifiers)  # noqa: E731
    fp32 = detector["fp32_ms"] + CROPS_PER_SEARCH * mean("fp32_ms")
    int8 = detector["int8_ms"] + CROPS_PER_SEARCH * mean("int8_ms")
    return fp32 / int8


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """Pull the ratios the targets name out of the sections."""
    fleet = report.get("fleet", {})
    classifier = report.get("classifier", {})
    hnsw = report.get("hnsw", {})
    int8 = report.get("int8", {})
    return {
        "fleet_vs_in_process_p50": fleet.get("fleet_vs_in_process_p50"),
        "p99_over_p50_at_70_percent": fleet.get("p99_over_p50_at_70_percent"),
        "search_p50_ms": fleet.get("fleet_p50_ms"),
        "peak_searches_per_second": fleet.get("peak_throughput_per_second"),
        "micro_batching_throughput_gain": fleet.get("micro_batching_throughput_gain"),
        "batch_speedup": classifier.get("batching", {}).get("batch_speedup"),
        "replicas_vs_threads_throughput": classifier.get("replicas", {}).get("replicas_vs_threads_throughput"),
        "hnsw_memory_vs_formula": hnsw.get("hnsw_memory_vs_formula"),
        "hnsw_qps_vs_exact_at_1m": hnsw.get("hnsw_qps_vs_exact_at_1m"),
        "int8_speedup": int8_search_speedup(int8.get("speed", {})) if int8 else None,
        "int8_type_precision_change_points": int8.get("type_precision_at_10_change_points"),
    }


def write_bench_report(report: dict[str, Any], out: Path) -> None:
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    # Recomputed headline figures replace those of an earlier rendering.
    figures_at_top = headline(report)
    report = {**figures_at_top, **{key: value for key, value in report.items() if key not in figures_at_top}}
    (out / "bench.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "bench.md").write_text(render_markdown(report, figures))


def _number(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def render_markdown(report: dict[str, Any], figures: Path) -> str:
    machine = report["machine"]
    lines = [
        "# Speed and scaling benchmark",
        "",
        f"Written by `python -m benchmarks.run` (`make bench`) on {machine['cores']} cores ({machine['processor']}), "
        f"Python {machine['python']}, in {report.get('seconds', 0):.0f} s"
        + (" with the small settings of the tests, so the figures are not representative." if report.get("small") else ".")
        + " Every ratio below compares two figures measured in this one run.",
        "",
        "## Targets",
        "",
        "| figure | measured | target | met |",
        "| --- | --- | --- | --- |",
    ]
    for name, (sign, target) in TARGETS.items():
        value = report.get(name)
        if value is None:
            met = "-"
        elif sign == "<=":
            met = "yes" if value <= target else "no"
        else:
            met = "yes" if value >= target else "no"
        lines.append(f"| `{name}` | {_number(value)} | {sign} {target:g} | {met} |")
    lines.append("")
    if "fleet" in report:
        lines += _fleet_section(report["fleet"], figures)
    if "classifier" in report:
        lines += _classifier_section(report["classifier"])
    if "hnsw" in report:
        from benchmarks.hnsw_scaling import plot_hnsw_scaling, render_hnsw_markdown

        plot_hnsw_scaling(report["hnsw"], figures / "bench-hnsw.png")
        if report["hnsw"].get("reused_from"):
            lines += [f"The HNSW figures come from an earlier run of `benchmarks.hnsw_scaling` on this machine, read from "
                      f"`{report['hnsw']['reused_from']}`, not from this run.", ""]
        lines += [render_hnsw_markdown(report["hnsw"], "figures/bench-hnsw.png"), ""]
    if "int8" in report:
        lines += _int8_section(report["int8"])
    return "\n".join(lines) + "\n"


def _fleet_section(fleet: dict, figures: Path) -> list[str]:
    lines = [
        "## Search through the fleet",
        "",
        f"{fleet['photos']} held-out street photos, the whole fleet as local processes (one ONNX Runtime thread each), "
        "answer cache off. Closed loop: each client sends its next photo when its answer arrives.",
        "",
        "| concurrency | p50 ms | p95 ms | p99 ms | searches/s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for level in fleet["closed_loop"]:
        latency = level["latency_ms"]
        lines.append(f"| {level['concurrency']} | {latency['p50']:.1f} | {latency['p95']:.1f} | {latency['p99']:.1f} | "
                     f"{level['throughput_per_second']:.1f} |")
    paired = fleet["side_by_side"]
    in_process, fleet_alone = paired["in_process_latency_ms"], paired["fleet_latency_ms"]
    open_loop = fleet["open_loop_70"]
    batched = fleet.get("with_micro_batching")
    lines += [
        "",
        f"- Side by side, one search at a time, alternating photo by photo ({paired['requests']} searches each): "
        f"in one process (same code, one thread as each service has) p50 {in_process['p50']:.1f} ms, p99 {in_process['p99']:.1f} ms; "
        f"through the fleet p50 {fleet_alone['p50']:.1f} ms, p99 {fleet_alone['p99']:.1f} ms; "
        f"fleet p50 / in-process p50 = **{_number(fleet['fleet_vs_in_process_p50'])}**.",
        f"- Open loop at {open_loop['rate_per_second']:.1f} searches/s (70% of the peak {fleet['peak_throughput_per_second']:.1f}): "
        f"p50 {open_loop['latency_ms']['p50']:.1f} ms, p99 {open_loop['latency_ms']['p99']:.1f} ms, "
        f"p99/p50 **{_number(fleet['p99_over_p50_at_70_percent'])}**.",
    ]
    if batched:
        lines.append(f"- Batching across classifier requests on (`CLASSIFIER_MICRO_BATCHING=true`), at concurrency "
                     f"{batched['concurrency']}: {batched['throughput_per_second']:.1f} searches/s, p50 "
                     f"{batched['latency_ms']['p50']:.1f} ms; throughput with it on / off = "
                     f"{_number(fleet.get('micro_batching_throughput_gain'))}.")
    lines += ["", "Mean time per call of each stage at concurrency 1, from each service's `apparel_stage_seconds` "
              "(`http` is the whole request inside the service; the gateway's `classify` and `search` include the calls "
              "to the other services):", "", "| service.stage | ms |", "| --- | --- |"]
    lines += [f"| {stage} | {ms:.2f} |" for stage, ms in fleet["stage_ms"].items()]
    _plot_latency(fleet, figures / "bench-latency.png")
    lines += ["", "![latency and throughput by concurrency](figures/bench-latency.png)", ""]
    return lines


def _plot_latency(fleet: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = fleet["closed_loop"]
    concurrency = [level["concurrency"] for level in levels]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    for key in ("p50", "p95", "p99"):
        left.plot(concurrency, [level["latency_ms"][key] for level in levels], marker="o", label=key)
    left.axhline(fleet["side_by_side"]["in_process_latency_ms"]["p50"], color="grey", linestyle="--", label="in-process p50")
    left.set_xlabel("concurrent clients")
    left.set_ylabel("ms")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    right.plot(concurrency, [level["throughput_per_second"] for level in levels], marker="o")
    right.set_xlabel("concurrent clients")
    right.set_ylabel("searches per second")
    right.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def _classifier_section(classifier: dict) -> list[str]:
    batching = classifier["batching"]
    replicas = classifier["replicas"]
    per_crop = batching["ms_per_crop"]
    one, two = replicas["one_process_two_threads"], replicas["two_processes_one_thread"]
    return [
        "## Classifier service",
        "",
        f"Real street crops, {batching['crops_per_request']} per request (one photo's crops), {batching['crops']} crops; "
        "best of three rounds.",
        "",
        "| | ms per crop |",
        "| --- | --- |",
        f"| service, one request per photo | {per_crop['service_batch']:.2f} |",
        f"| service, one request per crop | {per_crop['service_single']:.2f} |",
        f"| in-process, one batch per photo | {per_crop['model_batch']:.2f} |",
        f"| in-process, one call per crop | {per_crop['model_single']:.2f} |",
        "",
        f"`batch_speedup` (service, per crop over per photo): **{_number(batching['batch_speedup'])}**; in-process "
        f"{_number(batching['model_batch_speedup'])}.",
        "",
        f"Replicas at concurrency {replicas['concurrency']}: two processes with one thread each "
        f"{two['crops_per_second']:.0f} crops/s (p50 {two['latency_ms']['p50']:.1f} ms, p99 {two['latency_ms']['p99']:.1f} ms) "
        f"against one process with two threads {one['crops_per_second']:.0f} crops/s (p50 {one['latency_ms']['p50']:.1f} ms, "
        f"p99 {one['latency_ms']['p99']:.1f} ms): ratio {_number(replicas['replicas_vs_threads_throughput'])}.",
        "",
    ]


def _int8_section(int8: dict) -> list[str]:
    lines = ["## int8 static quantization (QDQ)", "", "ONNX Runtime, ms per crop (per photo for the detector), median of repeated runs.", "",
             "| model | threads | batch | fp32 ms | int8 ms | speed-up |", "| --- | --- | --- | --- | --- | --- |"]
    for model, by_threads in int8.get("speed", {}).items():
        for threads, batches in by_threads.items():
            for batch, figures in batches.items():
                lines.append(f"| {model} | {threads.removeprefix('threads_')} | {batch.removeprefix('batch_')} | "
                             f"{figures['fp32_ms']:.2f} | {figures['int8_ms']:.2f} | {figures['fp32_ms'] / figures['int8_ms']:.2f} |")
    lines.append("")
    lines.append(f"`int8_speedup` (one detector run plus {CROPS_PER_SEARCH} crops at batch 1, {SERVICE_THREADS} thread as in the fleet): "
                 f"**{_number(int8_search_speedup(int8.get('speed', {})))}**.")
    quality = int8.get("quality")
    if quality:
        lines += _int8_quality_lines(quality)
    lines.append("")
    return lines


def _int8_quality_lines(quality: dict) -> list[str]:
    """Return the retrieval table behind the choice of the models served as int8."""
    detected, ground_truth = quality["detected"], quality["ground_truth"]
    lines = [
        "",
        f"Retrieval type precision@10 on the {quality['photos']} held-out street photos ({quality['note']}):",
        "",
        "| class | queries | fp32, true boxes | int8, true boxes | change (points) | colour change (points) "
        "| fp32, detected | int8, detected | change (points) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows = [("all", ground_truth, detected)] + [
        (high_level, figures, detected["per_class"].get(high_level)) for high_level, figures in ground_truth["per_class"].items()
    ]
    for name, true_boxes, found in rows:
        colour = true_boxes.get("colour_change_points")
        cells = [name, str(true_boxes["queries"]), f"{true_boxes['fp32']:.3f}", f"{true_boxes['int8']:.3f}",
                 f"{true_boxes['change_points']:+.1f}", "" if colour is None else f"{colour:+.1f}"]
        cells += [f"{found['fp32']:.3f}", f"{found['int8']:.3f}", f"{found['change_points']:+.1f}"] if found else ["", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "With true boxes the detector's misses drop out, so each class's row measures mostly its own classifier "
        "(the wearer model still sets the gender searched). A model is served as int8 (the Makefile's INT8_MODELS) "
        "when its class loses at most 1 point of type precision with true boxes; the detector and the wearer model "
        "when the detected-box figure over all classes does. Where the catalog's held-out products of a class have "
        "a single type, type precision is 1 by construction, and the colour column is the one that can show a loss.",
    ]
    return lines
