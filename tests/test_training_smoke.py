"""A few training steps on a handful of real photos write ONNX models that load and answer.

Training to full quality is `make models`; these runs only prove the code path.
"""

import numpy as np
from PIL import Image

from shared import datasets
from shared.inference import Classifier, Detector
from training import train_classifier, train_detector, train_wearer


def test_detector_smoke_run(tmp_path):
    out = tmp_path / "detector"
    train_detector.main([
        "--epochs", "1", "--limit", "6", "--max-steps", "2", "--batch-size", "2",
        "--run-dir", str(tmp_path / "run"), "--out", str(out),
    ])
    assert (tmp_path / "run" / "log.jsonl").exists()
    assert (tmp_path / "run" / "curves.png").exists()

    detector = Detector(out)
    photo = Image.open(datasets.datasets_dir() / datasets.CCP / "photos" / "0001.jpg").convert("RGB")
    batch, _ = detector.preprocess(photo)
    boxes, scores = detector.session.run(["boxes", "scores"], {"images": batch[None]})
    assert boxes.shape[2] == 4
    assert scores.shape[2] == len(detector.classes)
    assert np.all((scores >= 0) & (scores <= 1))
    for detection in detector.detect([photo], score_threshold=0.01)[0]:
        assert 0 <= detection.box[0] < detection.box[2] <= photo.width
        assert 0 <= detection.box[1] < detection.box[3] <= photo.height


def test_classifier_smoke_run(tmp_path):
    out = tmp_path / "bottom"
    train_classifier.main([
        "--category", "bottom", "--limit", "12", "--epochs", "1", "--views", "2",
        "--run-dir", str(tmp_path / "run"), "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
        "--catalog-boxes", str(tmp_path / "no-boxes.json"),
    ])
    classifier = Classifier(out)
    assert classifier.card["category"] == "bottom"
    photo = Image.open(datasets.datasets_dir() / datasets.CATALOG / "images" / "21379.jpg").convert("RGB")
    crop = classifier.crop(photo, np.array([0, 0, photo.width, photo.height], np.float32))
    output = classifier.run(np.stack([crop, crop[:, ::-1]]))
    for task, vocabulary in classifier.tasks.items():
        assert output.probabilities[task].shape == (2, len(vocabulary))
        np.testing.assert_allclose(output.probabilities[task].sum(axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(output.embeddings, axis=1), 1.0, atol=1e-4)
    assert output.task_features.shape == (2, 128 * len(classifier.tasks))


def test_wearer_smoke_run(tmp_path):
    out = tmp_path / "wearer"
    train_wearer.main([
        "--limit", "40", "--epochs", "1", "--views", "2",
        "--run-dir", str(tmp_path / "run"), "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
    ])
    wearer = Classifier(out)
    assert wearer.tasks == {"wearer": ["man", "woman", "boy", "girl"]}
    output = wearer.run(np.zeros((1, wearer.input_size, wearer.input_size, 3), np.uint8))
    np.testing.assert_allclose(output.probabilities["wearer"].sum(), 1.0, atol=1e-4)
