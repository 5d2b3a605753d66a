"""Write the quality report: ``quality.json`` with every figure and
``quality.md`` with tables and plots, rendered from the JSON alone so the
ablation command can add its section and render the page again."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from evaluation.classification import plot_confusion

log = logging.getLogger(__name__)

# Points of colour agreement@10 from which colour re-ranking earns a place in the service.
COLOUR_RERANK_WORTH_POINTS = 5

AIMS = {
    "detected type precision@10": ("retrieval", "detected", "type_precision_at_10", 0.80),
    "detected colour agreement@10": ("retrieval", "detected", "colour_agreement_at_10", 0.60),
    "HNSW recall@10": ("retrieval", "hnsw_recall_at_10", None, 0.99),
}


def _number(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _lookup(report: dict, path: tuple) -> Any:
    value: Any = report
    for part in path:
        if part is None:
            break
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def write_report(report: dict[str, Any], out: Path) -> None:
    """Write quality.json and quality.md into ``out``, keeping an ablation
    section of an earlier run on the same data when this run has none."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "quality.json"
    if "ablation" not in report and json_path.exists():
        try:
            earlier = json.loads(json_path.read_text())
        except json.JSONDecodeError:
            earlier = {}
        same_data = earlier.get("dataset_root") == report.get("dataset_root") and earlier.get("split") == report.get("split")
        if "ablation" in earlier and same_data:
            report["ablation"] = earlier["ablation"]
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    (out / "quality.md").write_text(render_markdown(report, out / "figures"))


def _models_line(versions: dict[str, str]) -> str:
    """Name the measured models: the int8 ones the fleet serves carry an ``-int8`` version."""
    quantized = sorted(name for name, version in versions.items() if str(version).endswith("-int8"))
    if not quantized:
        kind = "float, as committed in `models/`"
    elif len(quantized) == len(versions):
        kind = "int8 (static QDQ), as `make serving-models` writes them"
    else:
        kind = f"int8 for {', '.join(quantized)}, float for the rest"
    listed = ", ".join(f"{name} {version}" for name, version in sorted(versions.items()))
    return f"Models: {kind}; versions {listed}."


def render_markdown(report: dict[str, Any], figures: Path) -> str:
    figures.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Search quality report",
        "",
        f"Written by `python -m evaluation` (`make eval`) on `{report['dataset_root']}`, split `{report['split']}`: "
        f"{report['photos']['clothing_co_parsing']} clothing-co-parsing photos, {report['photos']['colorful_fashion']} "
        f"colorful-fashion photos, {report['photos']['catalog_rows']} catalog rows. The catalog searched is the whole "
        f"fashion-product-images folder of that root: {report['index'].get('indexed')} products in "
        f"{report['index'].get('keys')} indices. Run time {report.get('seconds', 0):.0f} s.",
        "",
        _models_line(report.get("models", {})),
        "",
    ]
    lines += _aims_section(report)
    lines += _detection_section(report)
    lines += _classification_section(report, figures)
    lines += _retrieval_section(report, figures)
    lines += _ranking_section(report)
    if "ablation" in report:
        lines += _ablation_section(report["ablation"])
    return "\n".join(lines) + "\n"


def _aims_section(report: dict) -> list[str]:
    lines = ["## Aims", "", "| figure | measured | aim | met |", "| --- | --- | --- | --- |"]
    for name, (*path, aim) in AIMS.items():
        value = _lookup(report, tuple(path))
        if value is None:
            met = "-"
        else:
            met = "yes" if value >= aim else "no"
        lines.append(f"| {name} | {_number(value)} | {aim:.2f} | {met} |")
    fleet = report["retrieval"].get("fleet_equals_in_process")
    lines += ["", f"POST /search on the fleet returns the same top-10 products as the in-process pipeline for every photo: "
                  f"**{_number(fleet)}**.", ""]
    return lines


def _detection_section(report: dict) -> list[str]:
    single, ensemble = report["detection"], report["detection_ensemble"]
    colourful, colourful_ensemble = report["detection_colorful"], report["detection_ensemble_colorful"]
    lines = [
        "## Detection",
        "",
        "mAP@0.5 with Pascal VOC all-point interpolation; mAP@0.5:0.95 averages IoU 0.50 to 0.95. Clothing-co-parsing boxes "
        "come from the pixel masks; colorful-fashion boxes are mapped onto the high-level classes, and its shoe boxes are "
        "ignored (they cover one shoe or both, the detector finds one box per shoe). The ensemble is the query-time detector "
        f"run on the views {', '.join(ensemble.get('views', []))} (a scale below 1 shrinks the photo inside a grey border; "
        "above 1, four overlapping tiles each show part of the photo at that scale), fused per class by "
        f"{'non-maximum suppression' if ensemble.get('fusion') == 'nms' else 'weighted box fusion'}. The views and fusion "
        "were chosen on the held-out photos (see `shared/ensemble.py`), so the ensemble's gain there is optimistic.",
        "",
        "| | detector | ensemble |",
        "| --- | --- | --- |",
        f"| clothing-co-parsing mAP@0.5 | {_number(single['map50'])} | {_number(ensemble['map50'])} |",
        f"| clothing-co-parsing mAP@0.5:0.95 | {_number(single['map50_95'])} | {_number(ensemble['map50_95'])} |",
        f"| colorful-fashion mAP@0.5 | {_number(colourful['map50'])} | {_number(colourful_ensemble['map50'])} |",
        f"| colorful-fashion mAP@0.5:0.95 | {_number(colourful['map50_95'])} | {_number(colourful_ensemble['map50_95'])} |",
        "",
        "| class | AP@0.5 | ensemble | instances | colorful AP@0.5 | colorful ensemble |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, entry in sorted(single["per_class"].items(), key=lambda pair: -(pair[1]["map50"] or -1)):
        lines.append(
            f"| {name} | {_number(entry['map50'])} | {_number(ensemble['per_class'].get(name, {}).get('map50'))} | "
            f"{entry.get('instances', '-')} | {_number(colourful['per_class'].get(name, {}).get('map50'))} | "
            f"{_number(colourful_ensemble['per_class'].get(name, {}).get('map50'))} |"
        )
    lines += ["", "![precision-recall per class](figures/quality-detection-pr.png)", ""]
    return lines


def _classification_section(report: dict, figures: Path) -> list[str]:
    lines = [
        "## Classification",
        "",
        "Fine-type accuracy on catalog crops (cut as the indexing job cuts them) and on street crops (ground-truth boxes "
        "of items whose label names one fine class, cut as the gateway cuts them).",
        "",
        "| category | catalog accuracy | catalog crops | street accuracy | street crops |",
        "| --- | --- | --- | --- | --- |",
    ]
    images = []
    for category, entry in report["classification"].items():
        lines.append(f"| {category} | {_number(entry.get('catalog_accuracy'))} | {entry.get('catalog_count', 0)} | "
                     f"{_number(entry.get('street_accuracy'))} | {entry.get('street_count', 0)} |")
        for source in ("catalog", "street"):
            matrix = entry.get(f"{source}_confusion")
            if matrix and len(entry["classes"]) > 1:
                name = f"quality-confusion-{category}-{source}.png"
                plot_confusion(matrix, entry["classes"], f"{category}, {source} crops", figures / name)
                images.append(f"![{category} {source} confusion](figures/{name})")
    wearer = report.get("wearer", {})
    lines += ["", f"Wearer (man, woman, boy, girl) accuracy on catalog garment photos: "
                  f"**{_number(wearer.get('catalog_accuracy'))}** (n={wearer.get('catalog_count', 0)}).", ""]
    if wearer.get("catalog_confusion"):
        plot_confusion(wearer["catalog_confusion"], wearer["classes"], "wearer, catalog photos", figures / "quality-confusion-wearer.png")
        images.append("![wearer confusion](figures/quality-confusion-wearer.png)")
    lines += ["Confusion matrices (rows: true class; shading: share of the row):", "", " ".join(images), ""]
    return lines


def _retrieval_table(rows: list[tuple[str, dict]]) -> list[str]:
    lines = [
        "| queries | type P@1 | type P@5 | type P@10 | colour agreement@10 | MRR | found | n |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, figures in rows:
        lines.append(
            f"| {name} | {_number(figures.get('type_precision_at_1'))} | {_number(figures.get('type_precision_at_5'))} | "
            f"{_number(figures.get('type_precision_at_10'))} | {_number(figures.get('colour_agreement_at_10'))} | "
            f"{_number(figures.get('mrr'))} | {_number(figures.get('found'))} | {figures.get('queries', 0)} |"
        )
    return lines


def _retrieval_section(report: dict, figures: Path) -> list[str]:
    retrieval = report["retrieval"]
    lines = [
        "## Retrieval",
        "",
        "Queries: items of clothing-co-parsing photos whose class has a classifier and whose label names catalog article "
        "types. Ground truth: the item's mask-derived box is sent as the search region. Detected: a plain search of the "
        "photo; the item's results are those of the detected item of its class at IoU 0.5 or more, and an item no "
        "detection matches counts as a miss. A result's type counts when its `articleType` is one the street label maps "
        "to; colour agrees when its `baseColour`, on the palette, is the palette colour of the item's mask pixels. An "
        "index with fewer than 10 products of the right type caps precision@10, which matters for small catalogs. "
        f"Service settings: {json.dumps(retrieval['settings'])}.",
        "",
    ]
    lines += _retrieval_table([("ground-truth boxes", retrieval["ground_truth"]), ("detected boxes", retrieval["detected"])])
    lines += ["", "Per class (detected boxes, then ground-truth boxes):", ""]
    per_class = retrieval["detected"].get("per_class", {})
    lines += _retrieval_table([(f"{name} detected", per_class[name]) for name in per_class]
                              + [(f"{name} ground truth", retrieval["ground_truth"]["per_class"][name]) for name in per_class])
    _plot_retrieval(retrieval, figures / "quality-retrieval.png")
    lines += ["", "![type precision@10 per class](figures/quality-retrieval.png)", ""]
    return lines


def _plot_retrieval(retrieval: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    classes = sorted(retrieval["ground_truth"].get("per_class", {}))
    if not classes:
        return
    positions = np.arange(len(classes))
    figure, ax = plt.subplots(figsize=(max(5, 0.9 * len(classes) + 2), 3.2))
    for offset, (source, colour) in zip((-0.2, 0.2), (("ground_truth", "tab:blue"), ("detected", "tab:orange"))):
        values = [retrieval[source]["per_class"].get(c, {}).get("type_precision_at_10") or 0 for c in classes]
        ax.bar(positions + offset, values, width=0.4, label=source.replace("_", " "), color=colour)
    ax.set_xticks(positions, classes, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("type precision@10")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def _ranking_section(report: dict) -> list[str]:
    retrieval = report["retrieval"]
    default_k = retrieval["settings"]["top_fine_classes"]
    by_k = retrieval["top_fine_classes"]
    # Ground-truth boxes isolate the ranking from detection misses; fewer classes win a tie, as they cost less.
    best_k = max(by_k, key=lambda k: (round(by_k[k]["ground_truth"].get("type_precision_at_10") or 0, 3), -int(k)))
    lines = ["## Ranking options", "", "Fine classes searched per item (the best one always; the next ones while their "
             "probability clears the floor):", ""]
    lines += _retrieval_table([(f"top {k}, {source.replace('_', ' ')}", entry[source]) for k, entry in by_k.items()
                               for source in ("ground_truth", "detected")])
    best_figure = round(by_k[best_k]["ground_truth"].get("type_precision_at_10") or 0, 3)
    default_figure = round(by_k.get(str(default_k), {}).get("ground_truth", {}).get("type_precision_at_10") or 0, 3)
    if str(default_k) == best_k:
        verdict = ", the same."
    elif default_figure == best_figure:
        verdict = ", which ties with it here."
    else:
        verdict = f", which scores {default_figure:.3f} here against {best_figure:.3f}."
    lines += ["", f"Best by type precision@10 with ground-truth boxes (fewer classes on a tie): top {best_k}. The service "
                  f"searches the top {default_k}{verdict}", ""]
    by_score = retrieval.get("min_item_score", {})
    if by_score:
        lines += ["Detection score from which an item is searched (detected boxes; more items find more of the true ones, "
                  "and this metric does not count searches of items that are not there):", "",
                  "| min score | type P@10 | colour agreement@10 | found | items searched per photo |", "| --- | --- | --- | --- | --- |"]
        for score, figures in by_score.items():
            lines.append(f"| {score} | {_number(figures.get('type_precision_at_10'))} | {_number(figures.get('colour_agreement_at_10'))} | "
                         f"{_number(figures.get('found'))} | {_number(figures.get('items_per_photo'), 1)} |")
        lines += ["", f"The service searches items from score {retrieval['settings']['min_item_score']:g}: a lower floor finds more "
                  "true items, but most of the items it adds are not there (`reports/thresholds.md` matches detections to true "
                  "items by score band), and a shopper sees each of them as a wrong result.", ""]

    rerank = retrieval.get("colour_reranking", {})
    if rerank:
        lines += ["Re-ranking the 30 nearest products of each ground-truth query by embedding distance + w times the "
                  "cosine distance of the colour task's 128-D features:", "",
                  "| w | type P@10 | colour agreement@10 | MRR |", "| --- | --- | --- | --- |"]
        for weight, figures in rerank.items():
            lines.append(f"| {weight} | {_number(figures.get('type_precision_at_10'))} | "
                         f"{_number(figures.get('colour_agreement_at_10'))} | {_number(figures.get('mrr'))} |")
        baseline = rerank.get("0", {}).get("colour_agreement_at_10") or 0
        best_weight = max(rerank, key=lambda w: rerank[w].get("colour_agreement_at_10") or 0)
        gain = ((rerank[best_weight].get("colour_agreement_at_10") or 0) - baseline) * 100
        lines += ["", f"The best weight here, {best_weight}, adds {gain:.1f} points of colour agreement."]
        # Re-ranking in the service needs every product's colour feature in the shards and each crop's with its query.
        if gain < COLOUR_RERANK_WORTH_POINTS:
            lines.append(f"The service ranks by embedding distance alone: a gain under {COLOUR_RERANK_WORTH_POINTS} points does not "
                         "pay for storing 128 more floats per product in the shards and sending each crop's colour feature.")
        else:
            lines.append("That is worth re-ranking by colour in the service, which ranks by embedding distance alone so far.")
        lines.append("")
    hnsw = retrieval.get("hnsw", {})
    lines += [f"HNSW against exact search on the same vectors: recall@10 **{_number(retrieval.get('hnsw_recall_at_10'))}** "
              f"at ef {hnsw.get('ef')} over {hnsw.get('pairs', 0)} (query, index) pairs of indices holding more than 10 products.", ""]
    return lines


def _ablation_section(ablation: dict) -> list[str]:
    lines = [
        "## Ablation",
        "",
        ablation.get("description", ""),
        "",
        "| variant | type P@10 (detected) | colour agreement@10 (detected) | type P@10 (ground truth) | colour agreement@10 (ground truth) | queries |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for variant, figures in ablation.items():
        if not isinstance(figures, dict) or variant in ("preference", "training"):
            continue
        ground = figures.get("ground_truth", {})
        lines.append(f"| {variant} | {_number(figures.get('type_precision_at_10'))} | {_number(figures.get('colour_agreement_at_10'))} | "
                     f"{_number(ground.get('type_precision_at_10'))} | {_number(ground.get('colour_agreement_at_10'))} | "
                     f"{figures.get('queries', 0)} |")
    preference = ablation.get("preference", {})
    if preference:
        lines += ["", "Pairwise preference per query (the variant whose top 5 has more results of the right type wins, colour "
                  "breaks ties; the source paper's raters preferred type+colour over type alone 75/25 and all attributes over "
                  "type+colour 67/33):", "", "| pair | first wins | second wins | ties | first's share of decided |",
                  "| --- | --- | --- | --- | --- |"]
        for pair, counts in preference.items():
            decided = counts["a"] + counts["b"]
            share = counts["a"] / decided if decided else None
            lines.append(f"| {pair.replace('_vs_', ' vs ')} | {counts['a']} | {counts['b']} | {counts['tie']} | {_number(share, 2)} |")
    lines.append("")
    return lines
