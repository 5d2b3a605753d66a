"""Measure search latency through the running fleet and the indexing time, and
write them to reports/search_bench.json and reports/search_bench.md.

    make up && python scripts/bench_search.py --photos 60

Each held-out clothing-co-parsing photo (550 px wide) is sent once, so no
answer comes from the cache. Requests go one at a time (concurrency 1).
The indexing time is read from the index's own summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared import datasets  # noqa: E402


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", default="http://127.0.0.1:8000", help="gateway base URL")
    parser.add_argument("--photos", type=int, default=60, help="held-out photos to send, each once")
    parser.add_argument("--index-dir", type=Path, default=Path("var/index"), help="index folder with summary.json")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="report folder")
    args = parser.parse_args()

    root = datasets.datasets_dir()
    photo_ids = sorted(datasets.heldout_ids(datasets.CCP))[: args.photos]
    latencies, stages, sizes = [], {}, set()
    with httpx.Client(timeout=60) as client:
        # One warm-up request on a photo outside the measured set.
        warm = root / datasets.CCP / "photos" / f"{sorted(datasets.heldout_ids(datasets.CCP))[-1]}.jpg"
        client.post(f"{args.gateway}/search", files={"image": ("w.jpg", warm.read_bytes(), "image/jpeg")})
        for photo_id in photo_ids:
            data = (root / datasets.CCP / "photos" / f"{photo_id}.jpg").read_bytes()
            started = time.perf_counter()
            response = client.post(f"{args.gateway}/search", files={"image": ("p.jpg", data, "image/jpeg")})
            elapsed = (time.perf_counter() - started) * 1000
            response.raise_for_status()
            answer = response.json()
            if answer["cached"]:
                continue
            latencies.append(elapsed)
            sizes.add(f"{answer['image']['width']}x{answer['image']['height']}")
            for stage, value in answer["timings_ms"].items():
                stages.setdefault(stage, []).append(value)

    summary_path = args.index_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "requests": len(latencies),
        "photo_sizes": sorted(sizes),
        "search_ms": {"p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95), "mean": statistics.mean(latencies)},
        "gateway_stage_ms_p50": {stage: percentile(values, 0.5) for stage, values in stages.items()},
        "indexing": {k: summary.get(k) for k in ("seconds", "indexed", "rows_read", "duplicates_removed") if k in summary},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "search_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Search benchmark",
        "",
        f"Written by `scripts/bench_search.py` on {report['machine']}, the whole fleet running as local processes",
        f"(`make up`, one ONNX Runtime thread per process). {report['requests']} held-out street photos "
        f"({report['photo_sizes'][0]} to {report['photo_sizes'][-1]}), each sent once, one request at a time.",
        "",
        f"- search latency p50: **{report['search_ms']['p50']:.0f} ms**, p95 {report['search_ms']['p95']:.0f} ms",
        "- p50 per gateway stage (ms): " + ", ".join(f"{k} {v:.0f}" for k, v in report["gateway_stage_ms_p50"].items()),
    ]
    if report["indexing"]:
        lines.append(f"- catalog indexing: {report['indexing'].get('indexed')} products in {report['indexing'].get('seconds', 0):.0f} s")
    (args.out / "search_bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
