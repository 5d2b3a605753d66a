"""A one-epoch smoke run of the ablation on a few scarf products: the variants
export loadable models, V0 keeps the pretrained trunk, and reruns are skipped.

Scarf has two fine classes, so the type loss moves the trunk (a single-class
category such as belt has zero type loss), and it is trained without Lite0's
last block, as in production.

The full run is ``python -m training.ablation``; this only proves the code path.
"""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from shared import datasets
from shared.imaging import normalise
from shared.inference import Classifier
from training import ablation
from training.nets import Lite0Trunk
from training.train_classifier import to_tensor

CATEGORY = "scarf"


@pytest.fixture(scope="module")
def ablation_run(tmp_path_factory, datasets_env):
    root = tmp_path_factory.mktemp("ablation")
    argv = [
        "--datasets", str(datasets.datasets_dir()), "--categories", CATEGORY, "--variants", "V0", "V1",
        "--epochs", "1", "--limit", "40", "--views", "2", "--batch-size", "16", "--lr", "0.05",
        "--out", str(root / "out"), "--cache-dir", str(root / "cache"),
        "--catalog-boxes", str(root / "no-boxes.json"),
    ]
    ablation.main(argv)
    return root / "out", argv


@pytest.fixture(scope="module")
def datasets_env():
    # ablation.main sets DATASETS_DIR, so the fixture restores it for the other test modules.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DATASETS_DIR", str(datasets.datasets_dir()))
        yield patch


def catalog_crops(classifier: Classifier) -> np.ndarray:
    rows = [row for row in datasets.read_catalog(datasets.datasets_dir()) if row.high_level == CATEGORY][:3]
    crops = []
    for row in rows:
        photo = Image.open(row.path).convert("RGB")
        crops.append(classifier.crop(photo, np.array([0, 0, photo.width, photo.height], np.float32)))
    return np.stack(crops)


def raw_embeddings(classifier: Classifier, crops: np.ndarray) -> np.ndarray:
    """Run the ONNX graph without the card's centring."""
    norm = classifier.card["input"]["normalisation"]
    batch = normalise(crops, norm["mean"], norm["std"], norm["scale"])
    return classifier.session.run(["embedding"], {"images": batch})[0]


def pretrained_embeddings(classifier: Classifier, crops: np.ndarray) -> np.ndarray:
    """L2-normalised pooled features of the untouched ImageNet trunk, cut where the classifier's is."""
    last_block = classifier.card["ablation"]["settings"]["last_block"]
    trunk = Lite0Trunk(last_block, (last_block,)).eval()
    with torch.no_grad():
        pooled = trunk(to_tensor(crops))[0].mean(dim=(2, 3))
    return torch.nn.functional.normalize(pooled, dim=1).numpy()


def model_dir(out, variant):
    return out / variant / "classifiers" / CATEGORY


def test_variants_load_with_same_outputs(ablation_run):
    out, _ = ablation_run
    production = ort.InferenceSession(str(next((datasets.REPO_ROOT / "models" / "classifiers" / CATEGORY).glob("*.onnx"))))
    expected = [(o.name, o.shape[1:]) for o in production.get_outputs()]
    for variant in ("V0", "V1"):
        classifier = Classifier(model_dir(out, variant))
        assert classifier.card["ablation"]["variant"] == variant
        assert classifier.embedding_center is not None
        outputs = [(o.name, o.shape[1:]) for o in classifier.session.get_outputs()]
        assert outputs == expected


def test_v0_embedding_is_pretrained_feature(ablation_run):
    out, _ = ablation_run
    classifier = Classifier(model_dir(out, "V0"))
    crops = catalog_crops(classifier)
    expected = pretrained_embeddings(classifier, crops)
    # The export stores float16 weights, so allow small differences.
    np.testing.assert_allclose(raw_embeddings(classifier, crops), expected, atol=3e-3)

    centred = expected - classifier.embedding_center
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    np.testing.assert_allclose(classifier.run(crops).embeddings, centred, atol=1e-2)


def test_v1_embedding_is_fine_tuned(ablation_run):
    # With the run's high learning rate, fine-tuning moves the embedding far
    # beyond the float16 export error, which shows that the V0 check can fail.
    out, _ = ablation_run
    classifier = Classifier(model_dir(out, "V1"))
    crops = catalog_crops(classifier)
    difference = np.abs(raw_embeddings(classifier, crops) - pretrained_embeddings(classifier, crops)).max()
    assert difference > 1e-2


def test_cards_list_trained_losses(ablation_run):
    out, _ = ablation_run
    for variant in ("V0", "V1"):
        card = json.loads((model_dir(out, variant) / "card.json").read_text())
        assert card["loss_weights"] == {"type": 1.0}
        assert card["ablation"]["trained_tasks"] == ["type"]
        assert card["untrained_heads"]["tasks"] == ["colour", "usage", "pattern", "season"]
        assert set(card["training"]["validation"]) <= {"val_catalog_type", "val_street_type"}
    v0 = json.loads((model_dir(out, "V0") / "card.json").read_text())
    v1 = json.loads((model_dir(out, "V1") / "card.json").read_text())
    assert v0["trunk_frozen"] is True
    assert "trunk_frozen" not in v1


def test_summary_and_rerun_skips(ablation_run):
    out, argv = ablation_run
    summary = json.loads((out / ablation.SUMMARY_NAME).read_text())
    for variant in ("V0", "V1"):
        entry = summary["results"][variant][CATEGORY]
        assert entry["status"] == "trained"
        assert entry["training_seconds"] > 0
        assert "val_catalog_type" in entry["validation"]

    versions = {v: json.loads((model_dir(out, v) / "card.json").read_text())["version"] for v in ("V0", "V1")}
    ablation.main(argv)
    summary = json.loads((out / ablation.SUMMARY_NAME).read_text())
    for variant in ("V0", "V1"):
        assert summary["results"][variant][CATEGORY]["status"] == "skipped"
        assert summary["results"][variant][CATEGORY]["version"] == versions[variant]
