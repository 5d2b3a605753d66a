"""Static int8 quantization of one small classifier, calibrated on a few real
crops: the output loads with ``shared.inference`` and mostly agrees with the
float32 model.

The scarf classifier is used because it is small and, unlike the tie one, has
two types, so its top-1 type can disagree.
"""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from shared import datasets
from shared.imaging import catalog_product_box
from shared.inference import Classifier
from training import quantize

MODELS = Path(__file__).resolve().parent.parent / "models"
CATEGORY = "scarf"


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    out = tmp_path_factory.mktemp("models-int8")
    results = quantize.quantize_models(MODELS, out, calibration_photos=8, only=[CATEGORY])
    return out, results


def heldout_crops(model: Classifier, count: int) -> np.ndarray:
    """Cut held-out catalog products of the category by their non-white pixels."""
    heldout = datasets.heldout_ids(datasets.CATALOG)
    rows = [
        row for row in datasets.read_catalog(datasets.datasets_dir())
        if row.high_level == CATEGORY and row.product_id in heldout
    ][:count]
    crops = []
    for row in rows:
        image = Image.open(row.path).convert("RGB")
        box, _ = catalog_product_box(np.asarray(image), None, None)
        crops.append(model.crop(image, box))
    return np.stack(crops)


def test_restore_float32_weights_drops_casts():
    path = MODELS / "classifiers" / CATEGORY / f"classifier-{CATEGORY}.onnx"
    model = onnx.load(str(path))
    restored = quantize.restore_float32_weights(model)
    initializer_names = {initializer.name for initializer in model.graph.initializer}
    casts_of_weights = [node for node in model.graph.node if node.op_type == "Cast" and node.input[0] in initializer_names]
    float16 = [i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert restored > 0
    assert casts_of_weights == []
    assert float16 == []

    # Converting float16 to float32 is exact, so the outputs stay the same up to float rounding.
    size = json.loads((path.parent / "card.json").read_text())["input"]["width"]
    images = np.random.default_rng(0).uniform(-1, 1, (2, 3, size, size)).astype(np.float32)
    stored = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rewritten = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for got, expected in zip(rewritten.run(None, {"images": images}), stored.run(None, {"images": images})):
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_quantized_classifier_loads(quantized):
    out, _ = quantized
    int8 = Classifier(out / "classifiers" / CATEGORY)
    fp32 = Classifier(MODELS / "classifiers" / CATEGORY)
    crops = heldout_crops(fp32, 4)
    got, expected = int8.run(crops), fp32.run(crops)
    for task in fp32.tasks:
        assert got.probabilities[task].shape == expected.probabilities[task].shape
    assert got.embeddings.shape == expected.embeddings.shape
    assert got.task_features.shape == expected.task_features.shape


def test_quantized_graph_has_qdq_nodes(quantized):
    out, _ = quantized
    card = json.loads((out / "classifiers" / CATEGORY / "card.json").read_text())
    graph = onnx.load(str(out / "classifiers" / CATEGORY / card["file"])).graph
    op_counts = Counter(node.op_type for node in graph.node)
    assert op_counts["QuantizeLinear"] > 0
    assert op_counts["DequantizeLinear"] > 0
    assert op_counts["Cast"] == 0


def test_output_layers_stay_float(quantized):
    out, _ = quantized
    card = json.loads((out / "classifiers" / CATEGORY / "card.json").read_text())
    graph = onnx.load(str(out / "classifiers" / CATEGORY / card["file"])).graph
    kept = set(card["quantization"]["nodes_kept_float"])
    kept_op_types = {node.op_type for node in graph.node if node.name in kept}
    task_count = len(card["tasks"])
    assert len(kept) == 2 * task_count
    assert kept_op_types == {"Gemm", "Softmax"}


def test_quantized_card_is_new_version(quantized):
    out, _ = quantized
    card = json.loads((out / "classifiers" / CATEGORY / "card.json").read_text())
    original = json.loads((MODELS / "classifiers" / CATEGORY / "card.json").read_text())
    assert card["version"] != original["version"]
    assert card["file"] != original["file"]
    assert card["weights"].startswith("int8 static QDQ")
    assert card["quantization"]["source_version"] == original["version"]


def test_unselected_models_are_copied(quantized):
    out, _ = quantized
    detector_card = json.loads((out / "detector" / "card.json").read_text())
    original = json.loads((MODELS / "detector" / "card.json").read_text())
    assert detector_card["version"] == original["version"]
    assert (out / "detector" / detector_card["file"]).exists()
    assert (out / "wearer" / "card.json").exists()


def test_quantized_type_agrees_with_fp32(quantized):
    out, _ = quantized
    int8 = Classifier(out / "classifiers" / CATEGORY)
    fp32 = Classifier(MODELS / "classifiers" / CATEGORY)
    crops = heldout_crops(fp32, 10)
    agreement = np.mean(int8.run(crops).probabilities["type"].argmax(1) == fp32.run(crops).probabilities["type"].argmax(1))
    assert agreement >= 0.6


def test_results_report_agreement(quantized):
    _, results = quantized
    result = results[f"classifiers/{CATEGORY}"]
    assert result["calibration"]["catalog"] + result["calibration"]["street"] == 8
    assert result["agreement"]["heldout_catalog"]["crops"] > 0
    assert -1.0 <= result["agreement"]["heldout_catalog"]["embedding_cosine_min"] <= 1.0


def test_unknown_model_name_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown model names"):
        quantize.quantize_models(MODELS, tmp_path, calibration_photos=8, only=["sock"])
