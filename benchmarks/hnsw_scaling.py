"""HNSW scaling benchmark: build rate, resident memory, and recall@10 against
queries per second for hnswlib at 10^4 to 10^6 items of synthetic embeddings.

Every index size is measured in a fresh child process. The child's resident
memory then belongs to one index only. The child also starts with one BLAS
thread, so exact search runs on one core like an HNSW query does. For that the
parent sets ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and ``MKL_NUM_THREADS``
to 1 in the child's environment, because threadpoolctl is not a project dependency.

Run ``python -m benchmarks.hnsw_scaling --help`` for the options.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Callable

import hnswlib
import numpy as np

from services.indexer.indexfiles import HNSW_EF_CONSTRUCTION, HNSW_M
from shared.routing import INDEX_SPACE

log = logging.getLogger("benchmarks.hnsw_scaling")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
# 64 is the index shard's default query ef (services/index_shard/settings.py).
DEFAULT_EF_VALUES = (10, 20, 40, 64, 80, 160, 320)
RECALL_K = 10
TARGET_RECALL = 0.99
GENERATION_CHUNK_ROWS = 65_536
BUILD_BATCH_ROWS = 100_000
WARMUP_QUERIES = 10
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

ONE_BLAS_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
CHILD_COMMAND = "import sys; from benchmarks.hnsw_scaling import run_child; run_child(sys.argv[1])"

# Sizes from hnswlib's hnswalg.h and visited_list_pool.h (github.com/nmslib/hnswlib)
# compiled with GCC and glibc on x86-64. The benchmark runs hnswlib 0.8.0 from
# PyPI, and its trimmed resident memory matches these within about 2 %.
TABLEINT_BYTES = 4
LABEL_BYTES = 8
POINTER_BYTES = 8
LEVEL_BYTES = 4
MUTEX_BYTES = 40
VISITED_MARK_BYTES = 2
LABEL_OPERATION_LOCKS = 65_536
HASH_NODE_REQUEST_BYTES = 24
MAX_LEVEL_IN_SUM = 12


@dataclass(frozen=True)
class ClusteredData:
    """Parameters of the clustered low-rank generator.

    A point is a cluster centre plus Gaussian spread, both in a
    ``latent_dimension``-D subspace, then mapped to the full dimension by a
    random orthonormal basis, plus isotropic noise in every dimension, and
    finally L2-normalised. Image embeddings typically lie near such a
    low-dimensional structure, while Gaussian data has none.

    NOTE: the defaults are a choice, not fitted to the project's embeddings.
    With them, at 100,000 items of 512-D, the nearest neighbour of a held-out
    query has a mean cosine similarity of about 0.82.
    """

    clusters: int = 1_000
    latent_dimension: int = 32
    cluster_spread: float = 0.5
    noise_std: float = 0.08

    def describe(self, dimension: int) -> str:
        return (
            f"clustered low-rank: {self.clusters:,} cluster centres drawn from N(0, I) in a "
            f"{self.latent_dimension}-D subspace; each point is a uniformly chosen centre plus "
            f"N(0, {self.cluster_spread}^2 I) in that subspace, mapped to {dimension}-D by a random "
            f"orthonormal basis, plus N(0, {self.noise_std}^2 I) noise in all {dimension} dimensions, "
            "then L2-normalised; float32, generated in chunks of "
            f"{GENERATION_CHUNK_ROWS:,} rows from a fixed seed; queries are separate draws from the "
            "same centres and are not inserted"
        )


GAUSSIAN_DESCRIPTION = "Gaussian: every coordinate N(0, 1), then L2-normalised (no structure; the worst case for a graph index)"


def read_memory_status() -> dict[str, int]:
    """Return VmRSS and VmHWM (peak resident memory) of this process in bytes, from /proc/self/status."""
    values = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                amount, unit = rest.split()
                if unit != "kB":
                    raise ValueError(f"unexpected unit {unit!r} for {name} in /proc/self/status")
                values[name] = int(amount) * 1024
    return values


def clustered_model(dimension: int, seed: int, parameters: ClusteredData) -> tuple[np.ndarray, np.ndarray]:
    """Draw the latent cluster centres and the basis (latent x dimension, orthonormal rows)."""
    if parameters.latent_dimension > dimension:
        raise ValueError(f"latent dimension {parameters.latent_dimension} is larger than the dimension {dimension}; lower it")
    rng = np.random.default_rng([seed, 0])
    basis, _ = np.linalg.qr(rng.standard_normal((dimension, parameters.latent_dimension)))
    centres = rng.standard_normal((parameters.clusters, parameters.latent_dimension))
    return centres.astype(np.float32), np.ascontiguousarray(basis.T, dtype=np.float32)


def fill_vectors(out: np.ndarray, kind: str, rng: np.random.Generator, model: tuple[np.ndarray, np.ndarray] | None, parameters: ClusteredData) -> None:
    """Fill ``out`` with L2-normalised vectors chunk by chunk, so the temporaries stay small."""
    dimension = out.shape[1]
    for start in range(0, len(out), GENERATION_CHUNK_ROWS):
        rows = min(GENERATION_CHUNK_ROWS, len(out) - start)

        if kind == "clustered":
            centres, basis = model
            labels = rng.integers(0, len(centres), rows)
            latent = centres[labels] + parameters.cluster_spread * rng.standard_normal((rows, parameters.latent_dimension), dtype=np.float32)
            chunk = latent @ basis
            chunk += parameters.noise_std * rng.standard_normal((rows, dimension), dtype=np.float32)
        elif kind == "gaussian":
            chunk = rng.standard_normal((rows, dimension), dtype=np.float32)
        else:
            raise ValueError(f"unknown data kind {kind!r}; use 'clustered' or 'gaussian'")

        chunk /= np.linalg.norm(chunk, axis=1, keepdims=True)
        out[start:start + rows] = chunk


def make_dataset(kind: str, count: int, queries: int, dimension: int, seed: int, parameters: ClusteredData) -> tuple[np.ndarray, np.ndarray]:
    """Return (data, held-out queries); both come from the same distribution but separate random streams."""
    model = clustered_model(dimension, seed, parameters) if kind == "clustered" else None
    data = np.empty((count, dimension), dtype=np.float32)
    fill_vectors(data, kind, np.random.default_rng([seed, 1]), model, parameters)
    query_vectors = np.empty((queries, dimension), dtype=np.float32)
    fill_vectors(query_vectors, kind, np.random.default_rng([seed, 2]), model, parameters)
    return data, query_vectors


def glibc_chunk_bytes(request: int) -> int:
    """Return the bytes glibc malloc uses for a request on x86-64: request plus an
    8-byte header, rounded up to 16, at least 32."""
    return max(32, (request + 8 + 15) // 16 * 16)


def hnsw_formula_bytes(count: int, dimension: int, m: int, build_threads: int) -> dict:
    """Estimate the resident bytes of an hnswlib index from its memory layout.

    Level 0 stores, per element, a neighbour count and 2M neighbour ids, the
    float32 vector and the 8-byte label in one block. An element of level L > 0
    gets a separate malloc of L * (4M + 4) + 1 bytes. Levels are
    floor(-ln(U) / ln(M)) for uniform U, so P(level >= l) = M^-l and the
    expected level is 1 / (M - 1). Per element there are also a link-list
    pointer, an int level, a std::mutex, one 2-byte visited mark per visited
    list (one list per thread that ever searched), and a node plus bucket in
    the label hash map. The label-operation locks are a fixed array.
    """
    links_level0 = 2 * m * TABLEINT_BYTES + TABLEINT_BYTES
    level0_block = links_level0 + dimension * 4 + LABEL_BYTES
    links_per_level = m * TABLEINT_BYTES + TABLEINT_BYTES

    expected_upper_levels = 1.0 / (m - 1)
    expected_upper_allocation = sum(
        m ** -level * (1 - 1 / m) * glibc_chunk_bytes(level * links_per_level + 1)
        for level in range(1, MAX_LEVEL_IN_SUM + 1)
    )

    # NOTE: libstdc++ grows the bucket array by doubling to a prime, so the
    # bucket count lies between count and about 2 * count. The next power of
    # two is an estimate within that range.
    hash_buckets = 1 << max(count - 1, 1).bit_length()
    visited_lists = max(build_threads, 1)

    components = {
        "level0_links": count * links_level0,
        "level0_vectors": count * dimension * 4,
        "level0_labels": count * LABEL_BYTES,
        "upper_level_links": round(count * expected_upper_allocation),
        "link_list_pointers": count * POINTER_BYTES,
        "element_levels": count * LEVEL_BYTES,
        "link_list_locks": count * MUTEX_BYTES,
        "visited_lists": count * VISITED_MARK_BYTES * visited_lists,
        "label_hash_map": count * glibc_chunk_bytes(HASH_NODE_REQUEST_BYTES) + hash_buckets * POINTER_BYTES,
        "label_operation_locks": LABEL_OPERATION_LOCKS * MUTEX_BYTES,
    }
    layout_only = count * (level0_block + expected_upper_levels * links_per_level)
    total = sum(components.values())
    return {
        "total_bytes": int(total),
        "layout_only_bytes": round(layout_only),
        "bytes_per_element": (total - components["label_operation_locks"]) / count,
        "layout_only_bytes_per_element": layout_only / count,
        "expected_upper_levels_per_element": expected_upper_levels,
        "visited_lists": visited_lists,
        "components": components,
    }


def build_index(data: np.ndarray, m: int, ef_construction: int, threads: int, seed: int) -> tuple[hnswlib.Index, float]:
    """Build one index over ``data`` the way the indexer does; return it and the seconds taken."""
    count, dimension = data.shape
    start = time.perf_counter()
    index = hnswlib.Index(space=INDEX_SPACE, dim=dimension)
    index.init_index(max_elements=count, M=m, ef_construction=ef_construction, random_seed=seed)
    index.set_num_threads(threads)

    # Batches only give progress lines; hnswlib spreads each batch over the threads.
    for batch_start in range(0, count, BUILD_BATCH_ROWS):
        batch_stop = min(batch_start + BUILD_BATCH_ROWS, count)
        index.add_items(data[batch_start:batch_stop], np.arange(batch_start, batch_stop))
        elapsed = time.perf_counter() - start
        log.info("built %d of %d items in %.1f s (%.0f items/s)", batch_stop, count, elapsed, batch_stop / elapsed)

    return index, time.perf_counter() - start


def exact_top_k(data: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """Return the labels of the k largest inner products, best first; on unit vectors that is cosine."""
    scores = data @ query
    top = np.argpartition(scores, -k)[-k:]
    return top[np.argsort(-scores[top])]


def time_rounds(answer_all: Callable[[], None], min_seconds: float) -> tuple[float, float, int]:
    """Repeat a pass over the query set until ``min_seconds`` have passed, at least once.

    Returns (fastest pass, mean pass, passes) in seconds. The fastest pass is
    the least disturbed by other jobs on shared cores.
    """
    pass_seconds = []
    while not pass_seconds or sum(pass_seconds) < min_seconds:
        start = time.perf_counter()
        answer_all()
        pass_seconds.append(time.perf_counter() - start)
    return min(pass_seconds), float(np.mean(pass_seconds)), len(pass_seconds)


def time_exact_search(data: np.ndarray, query_vectors: np.ndarray, min_seconds: float) -> tuple[np.ndarray, dict]:
    """Search each query by brute force, one at a time; return the top-k labels and the timing."""
    for query in query_vectors[:WARMUP_QUERIES]:
        exact_top_k(data, query, RECALL_K)

    labels = np.empty((len(query_vectors), RECALL_K), dtype=np.int64)

    def answer_all() -> None:
        for row, query in enumerate(query_vectors):
            labels[row] = exact_top_k(data, query, RECALL_K)

    fastest, mean, passes = time_rounds(answer_all, min_seconds)
    return labels, {"qps": len(query_vectors) / fastest, "qps_mean": len(query_vectors) / mean, "passes": passes}


def measure_ef(index: hnswlib.Index, query_vectors: np.ndarray, exact_labels: np.ndarray, ef: int, min_seconds: float) -> dict:
    """Search each query in the index at one ef, one at a time; return QPS and recall@10 against exact search."""
    index.set_ef(ef)
    for query in query_vectors[:WARMUP_QUERIES]:
        index.knn_query(query[None, :], k=RECALL_K)

    found = np.empty((len(query_vectors), RECALL_K), dtype=np.int64)

    def answer_all() -> None:
        for row, query in enumerate(query_vectors):
            labels, _ = index.knn_query(query[None, :], k=RECALL_K)
            found[row] = labels[0]

    fastest, mean, passes = time_rounds(answer_all, min_seconds)
    hits = [len(np.intersect1d(found_row, exact_row)) for found_row, exact_row in zip(found, exact_labels)]
    return {
        "ef": ef,
        "qps": len(query_vectors) / fastest,
        "qps_mean": len(query_vectors) / mean,
        "passes": passes,
        "recall_at_10": float(np.mean(hits)) / RECALL_K,
    }


def release_free_heap() -> bool:
    """Return freed heap memory to the kernel with glibc's malloc_trim, so that
    memory freed by earlier steps neither hides nor inflates the next reading.
    Returns False where the C library has no malloc_trim (not glibc)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def build_and_measure_memory(data: np.ndarray, m: int, ef_construction: int, threads: int, seed: int) -> tuple[hnswlib.Index, dict]:
    """Build the index and read VmRSS before and after; the data array is
    resident in both readings, so the difference is the index alone."""
    count, dimension = data.shape
    gc.collect()
    trimmed = release_free_heap()
    before = read_memory_status()["VmRSS"]

    log.info("%d items: building with %d threads (M=%d, ef_construction=%d)", count, threads, m, ef_construction)
    index, build_seconds = build_index(data, m, ef_construction, threads, seed)
    after = read_memory_status()["VmRSS"]

    # Freed build temporaries (search queues, per-thread malloc arenas) stay
    # resident until trimmed; the trimmed reading is closer to a loaded index.
    release_free_heap()
    after_trim = read_memory_status()["VmRSS"]

    formula = hnsw_formula_bytes(count, dimension, m, threads)
    memory = {
        "build_threads": threads,
        "build_seconds": build_seconds,
        "build_rate": count / build_seconds,
        "memory_bytes": after - before,
        "memory_after_trim_bytes": after_trim - before,
        "malloc_trim": trimmed,
        "rss_before_build_bytes": before,
        "rss_after_build_bytes": after,
        "data_bytes": int(data.nbytes),
        "formula_bytes": formula["total_bytes"],
        "formula": formula,
        "memory_vs_formula": (after - before) / formula["total_bytes"],
        "memory_after_trim_vs_formula": (after_trim - before) / formula["total_bytes"],
    }
    log.info(
        "%d items: built in %.1f s (%.0f items/s); index resident memory %.1f MiB, %.1f MiB after trim, formula %.1f MiB",
        count, build_seconds, memory["build_rate"], memory["memory_bytes"] / 2**20,
        memory["memory_after_trim_bytes"] / 2**20, formula["total_bytes"] / 2**20,
    )
    return index, memory


def measure_one_size(
    kind: str,
    count: int,
    dimension: int,
    queries: int,
    ef_values: list[int],
    threads: int,
    seed: int,
    m: int,
    ef_construction: int,
    clustered: dict,
    min_timing_seconds: float,
) -> dict:
    """Measure one index size in this process; meant for a fresh child process."""
    load_at_start = os.getloadavg()[0]
    log.info("%s data, %d items of dimension %d: generating", kind, count, dimension)
    data, query_vectors = make_dataset(kind, count, queries, dimension, seed, ClusteredData(**clustered))

    index, memory = build_and_measure_memory(data, m, ef_construction, threads, seed)

    log.info("%d items: exact search of %d queries, one at a time", count, queries)
    exact_labels, exact = time_exact_search(data, query_vectors, min_timing_seconds)
    log.info("%d items: exact search %.1f QPS", count, exact["qps"])

    index.set_num_threads(1)
    ef_results = []
    for ef in ef_values:
        row = measure_ef(index, query_vectors, exact_labels, ef, min_timing_seconds)
        log.info("%d items: ef %d, %.0f QPS, recall@10 %.4f", count, ef, row["qps"], row["recall_at_10"])
        ef_results.append(row)

    return {
        "size": count,
        "data": kind,
        **memory,
        "peak_rss_bytes": read_memory_status()["VmHWM"],
        "exact_qps": exact["qps"],
        "exact_qps_mean": exact["qps_mean"],
        "exact_passes": exact["passes"],
        "ef_results": ef_results,
        "load_average_at_start": load_at_start,
        "load_average_at_end": os.getloadavg()[0],
    }


def run_child(config_path: str) -> None:
    """Entry point of a child process: read the arguments, measure, write the result."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    config = json.loads(Path(config_path).read_text(encoding="utf-8"))
    result = measure_one_size(**config["arguments"])
    Path(config["result_path"]).write_text(json.dumps(result), encoding="utf-8")


def measure_in_child(arguments: dict) -> dict:
    """Run ``measure_one_size`` in a fresh Python process with one BLAS thread; return its result."""
    with tempfile.TemporaryDirectory(prefix="hnsw-bench-") as folder:
        config_path = Path(folder) / "config.json"
        result_path = Path(folder) / "result.json"
        config_path.write_text(json.dumps({"arguments": arguments, "result_path": str(result_path)}), encoding="utf-8")

        environment = dict(os.environ, **ONE_BLAS_THREAD)
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        completed = subprocess.run([sys.executable, "-c", CHILD_COMMAND, str(config_path)], env=environment, cwd=REPO_ROOT, check=False)
        if completed.returncode != 0:
            raise RuntimeError(
                f"the benchmark child for {arguments['count']} {arguments['kind']} items failed with exit code "
                f"{completed.returncode} (a negative code is a signal, -9 often the out-of-memory killer); see its log above"
            )
        return json.loads(result_path.read_text(encoding="utf-8"))


def smallest_ef_reaching(entry: dict, target: float) -> dict | None:
    """Return the ef row with the smallest ef whose recall@10 reaches ``target``, or None."""
    for row in sorted(entry["ef_results"], key=lambda row: row["ef"]):
        if row["recall_at_10"] >= target:
            return row
    return None


def machine_description() -> dict:
    cpu_model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu_model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "hnswlib": version("hnswlib"),
        "numpy": np.__version__,
    }


def summarise(entries: list[dict], result: dict) -> None:
    """Add the headline ratios of the largest size to ``result``."""
    largest = entries[-1]
    result["largest_size"] = largest["size"]
    result["hnsw_memory_vs_formula"] = largest["memory_vs_formula"]

    row = smallest_ef_reaching(largest, TARGET_RECALL)
    if row is None:
        result["hnsw_qps_vs_exact_at_1m"] = None
        result["hnsw_qps_vs_exact_at_1m_ef"] = None
        result["hnsw_qps_vs_exact_at_1m_note"] = (
            f"no measured ef reached recall@10 >= {TARGET_RECALL} at {largest['size']:,} items; "
            f"the best was {max(r['recall_at_10'] for r in largest['ef_results']):.4f}; add larger ef values"
        )
        return

    result["hnsw_qps_vs_exact_at_1m"] = row["qps"] / largest["exact_qps"]
    result["hnsw_qps_vs_exact_at_1m_ef"] = row["ef"]
    if largest["size"] != 1_000_000:
        result["hnsw_qps_vs_exact_at_1m_note"] = (
            f"measured at the largest size run, {largest['size']:,} items, not 1,000,000"
        )


def run_hnsw_scaling(
    sizes: tuple[int, ...] = DEFAULT_SIZES,
    dimension: int = 512,
    queries: int = 200,
    ef_values: tuple[int, ...] = DEFAULT_EF_VALUES,
    threads: int | None = None,
    seed: int = 0,
    m: int = HNSW_M,
    ef_construction: int = HNSW_EF_CONSTRUCTION,
    clustered: ClusteredData = ClusteredData(),
    min_timing_seconds: float = 2.0,
) -> dict:
    """Measure one HNSW index per size on clustered data, plus Gaussian data at the smallest size.

    Each pass over the queries is repeated until ``min_timing_seconds`` have
    passed, and QPS comes from the fastest pass, so that other jobs on shared
    cores disturb it less. Every size runs in its own child process (see the
    module docstring).
    """
    sizes = sorted(set(sizes))
    if not sizes or sizes[0] <= RECALL_K:
        raise ValueError(f"sizes {sizes} must be non-empty and each larger than k={RECALL_K}")
    if queries < 1 or dimension < 1:
        raise ValueError(f"queries ({queries}) and dimension ({dimension}) must be at least 1")
    if not ef_values or min(ef_values) < 1:
        raise ValueError(f"ef values {ef_values} must be non-empty and each at least 1")
    threads = threads or os.cpu_count() or 1
    ef_values = sorted(set(ef_values))

    common = {
        "dimension": dimension,
        "queries": queries,
        "ef_values": ef_values,
        "threads": threads,
        "seed": seed,
        "m": m,
        "ef_construction": ef_construction,
        "clustered": asdict(clustered),
        "min_timing_seconds": min_timing_seconds,
    }
    started = datetime.now(timezone.utc)
    entries = []
    for size in sizes:
        log.info("clustered data, %d items: starting a child process", size)
        entries.append(measure_in_child({"kind": "clustered", "count": size, **common}))
    log.info("Gaussian data, %d items (contrast): starting a child process", sizes[0])
    gaussian = measure_in_child({"kind": "gaussian", "count": sizes[0], **common})

    result = {
        "generator": clustered.describe(dimension),
        "generator_parameters": asdict(clustered),
        "contrast_generator": GAUSSIAN_DESCRIPTION,
        "dimension": dimension,
        "space": INDEX_SPACE,
        "m": m,
        "ef_construction": ef_construction,
        "build_threads": threads,
        "query_threads": 1,
        "queries": queries,
        "k": RECALL_K,
        "seed": seed,
        "ef_values": ef_values,
        "target_recall": TARGET_RECALL,
        "min_timing_seconds": min_timing_seconds,
        "memory_method": (
            "VmRSS from /proc/self/status in a fresh child process, read just before and just after "
            "building, after glibc malloc_trim(0) before the first reading; the data array is resident in "
            "both readings, so the difference is the index. memory_after_trim_bytes is read again after "
            "a second malloc_trim(0), which returns freed build temporaries"
        ),
        "exact_method": (
            "numpy float32 matrix-vector product over the L2-normalised data plus argpartition, one query "
            "at a time, with OMP_NUM_THREADS=OPENBLAS_NUM_THREADS=MKL_NUM_THREADS=1 set before numpy loads"
        ),
        "machine": machine_description(),
        "started": started.isoformat(timespec="seconds"),
        "seconds": (datetime.now(timezone.utc) - started).total_seconds(),
        "sizes": entries,
        "gaussian_contrast": gaussian,
    }
    summarise(entries, result)
    return result


def plot_recall_curves(axes, result: dict, with_contrast: bool) -> None:
    """Draw recall@10 against QPS for each size, exact search as a star at recall 1."""
    for number, entry in enumerate(result["sizes"]):
        colour = f"C{number}"
        rows = sorted(entry["ef_results"], key=lambda row: row["ef"])
        axes.plot([row["qps"] for row in rows], [row["recall_at_10"] for row in rows], marker="o", color=colour, label=f"HNSW, {entry['size']:,} items")
        axes.plot([entry["exact_qps"]], [1.0], marker="*", markersize=14, linestyle="none", color=colour, label=f"exact, {entry['size']:,} items")

        # Label the ef values of the largest size in the zoomed panel only,
        # alternating above and below so that neighbouring labels do not overlap.
        if number == len(result["sizes"]) - 1 and not with_contrast:
            for position, row in enumerate(rows):
                offset = (4, 6) if position % 2 else (4, -11)
                axes.annotate(f"ef {row['ef']}", (row["qps"], row["recall_at_10"]), textcoords="offset points", xytext=offset, fontsize=7, color=colour)

    contrast = result.get("gaussian_contrast")
    if with_contrast and contrast:
        rows = sorted(contrast["ef_results"], key=lambda row: row["ef"])
        axes.plot([row["qps"] for row in rows], [row["recall_at_10"] for row in rows], marker=".", linestyle=":", color="grey", label=f"HNSW, Gaussian data, {contrast['size']:,} items")

    axes.axhline(result["target_recall"], color="grey", linewidth=0.8, linestyle="--")
    axes.set_xscale("log")
    axes.set_xlabel("queries per second (one query at a time, one thread)")
    axes.set_ylabel("recall@10")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, loc="lower left")


def plot_hnsw_scaling(result: dict, path: Path) -> None:
    """Write a PNG with two panels: the clustered data zoomed to its recall range, and the same with the Gaussian contrast."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (zoomed, full) = plt.subplots(1, 2, figsize=(13, 5.5))
    plot_recall_curves(zoomed, result, with_contrast=False)
    lowest = min(row["recall_at_10"] for entry in result["sizes"] for row in entry["ef_results"])
    zoomed.set_ylim(max(0.0, lowest - 0.02), 1.005)
    zoomed.set_title("clustered data")
    plot_recall_curves(full, result, with_contrast=True)
    full.set_title("clustered data and the Gaussian contrast")
    figure.suptitle(f"hnswlib, {result['dimension']}-D, {result['space']}, M={result['m']}, ef_construction={result['ef_construction']}")
    figure.tight_layout()

    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def mebibytes(count: int | float) -> str:
    return f"{count / 2**20:,.1f}"


def render_hnsw_markdown(result: dict, figure_name: str) -> str:
    """Return the report section: set-up, build and memory table, QPS and recall per ef, and the figure."""
    machine = result["machine"]
    sizes = result["sizes"]
    lines = [
        "## HNSW scaling",
        "",
        f"Written by `python -m benchmarks.hnsw_scaling` on {machine['cpu']}, {machine['cores']} cores shared with other jobs, "
        f"Python {machine['python']}, hnswlib {machine['hnswlib']}, numpy {machine['numpy']}; started {result['started']}, "
        f"took {result['seconds'] / 60:.1f} min.",
        "",
        f"- Index: hnswlib, space `{result['space']}`, M={result['m']}, ef_construction={result['ef_construction']} (the indexer's values), "
        f"{result['dimension']}-D float32, built with {result['build_threads']} threads.",
        f"- Data: {result['generator']}.",
        f"- Queries: {result['queries']} held-out queries, k={result['k']}, one query at a time with one hnswlib thread. "
        f"QPS is the fastest of repeated passes over the queries (at least {result['min_timing_seconds']:g} s in all).",
        f"- Exact search: {result['exact_method']}.",
        f"- Memory: {result['memory_method']}.",
        "",
        "| items | build (s) | build rate (items/s) | index memory (MiB) | after trim (MiB) | formula (MiB) | measured / formula | exact QPS |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in sizes:
        lines.append(
            f"| {entry['size']:,} | {entry['build_seconds']:,.1f} | {entry['build_rate']:,.0f} | {mebibytes(entry['memory_bytes'])} "
            f"| {mebibytes(entry['memory_after_trim_bytes'])} | {mebibytes(entry['formula_bytes'])} | {entry['memory_vs_formula']:.3f} "
            f"| {entry['exact_qps']:,.1f} |"
        )

    formula = sizes[-1]["formula"]
    lines += [
        "",
        f"The formula counts {formula['bytes_per_element']:,.1f} bytes per element, plus fixed memory, at {sizes[-1]['size']:,} items: "
        f"{formula['layout_only_bytes_per_element']:,.1f} for the level-0 block (2M+1 link words, the vector, the label) and the "
        f"upper-level links ({formula['expected_upper_levels_per_element']:.4f} expected levels per element), the rest for the link-list "
        "pointer, level, lock, visited marks and label hash map; the 65,536 label-operation locks add a fixed 2.5 MiB.",
        "",
        "Recall@10 and QPS per ef:",
        "",
        "| ef | " + " | ".join(f"{entry['size']:,}: QPS | {entry['size']:,}: recall@10" for entry in sizes) + " |",
        "|---:|" + "---:|---:|" * len(sizes),
    ]
    for ef in result["ef_values"]:
        cells = []
        for entry in sizes:
            row = next(row for row in entry["ef_results"] if row["ef"] == ef)
            cells.append(f"{row['qps']:,.0f} | {row['recall_at_10']:.4f}")
        lines.append(f"| {ef} | " + " | ".join(cells) + " |")

    contrast = result.get("gaussian_contrast")
    if contrast:
        best = max(contrast["ef_results"], key=lambda row: row["recall_at_10"])
        lines += [
            "",
            f"Contrast, {result['contrast_generator']}, {contrast['size']:,} items: recall@10 "
            + ", ".join(f"{row['recall_at_10']:.3f} at ef {row['ef']}" for row in contrast["ef_results"])
            + f" (best {best['recall_at_10']:.3f}); exact search {contrast['exact_qps']:,.1f} QPS; build rate {contrast['build_rate']:,.0f} items/s.",
        ]

    ratio = result["hnsw_qps_vs_exact_at_1m"]
    lines += ["", f"- Index memory / formula at {result['largest_size']:,} items: **{result['hnsw_memory_vs_formula']:.3f}**."]
    if ratio is None:
        lines.append(f"- HNSW QPS / exact QPS: not available; {result['hnsw_qps_vs_exact_at_1m_note']}.")
    else:
        lines.append(
            f"- HNSW QPS / exact QPS at {result['largest_size']:,} items, at the smallest ef with recall@10 >= {result['target_recall']} "
            f"(ef {result['hnsw_qps_vs_exact_at_1m_ef']}): **{ratio:,.1f}x**."
        )
        if "hnsw_qps_vs_exact_at_1m_note" in result:
            lines.append(f"- Note: {result['hnsw_qps_vs_exact_at_1m_note']}.")

    lines += ["", f"![recall@10 against queries per second for each index size]({figure_name})", ""]
    return "\n".join(lines)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.hnsw_scaling",
        description="Measure hnswlib build rate, resident memory, and recall@10 against QPS on synthetic clustered embeddings, one child process per index size.",
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="index sizes in items, one index each (default: %(default)s)")
    parser.add_argument("--dimension", type=int, default=512, help="vector dimension (default: %(default)s)")
    parser.add_argument("--queries", type=int, default=200, help="held-out queries per size (default: %(default)s)")
    parser.add_argument("--ef", type=int, nargs="+", default=list(DEFAULT_EF_VALUES), help="query ef values (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help=f"build threads (default: all cores, {os.cpu_count()} here); queries always use one")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data generator and of hnswlib's level generator (default: %(default)s)")
    parser.add_argument("--m", type=int, default=HNSW_M, help="HNSW M, links per element (default: the indexer's %(default)s)")
    parser.add_argument("--ef-construction", type=int, default=HNSW_EF_CONSTRUCTION, help="HNSW ef_construction (default: the indexer's %(default)s)")
    parser.add_argument("--min-timing-seconds", type=float, default=2.0, help="repeat each pass over the queries until this many seconds have passed (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("reports/bench_hnsw.json"), help="JSON result file (default: %(default)s)")
    parser.add_argument("--figure", type=Path, default=Path("reports/figures/bench-hnsw.png"), help="PNG figure file (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    arguments = parse_arguments(argv)
    result = run_hnsw_scaling(
        sizes=tuple(arguments.sizes),
        dimension=arguments.dimension,
        queries=arguments.queries,
        ef_values=tuple(arguments.ef),
        threads=arguments.threads,
        seed=arguments.seed,
        m=arguments.m,
        ef_construction=arguments.ef_construction,
        min_timing_seconds=arguments.min_timing_seconds,
    )

    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    plot_hnsw_scaling(result, arguments.figure)
    log.info("wrote %s and %s", arguments.out, arguments.figure)


if __name__ == "__main__":
    main()
