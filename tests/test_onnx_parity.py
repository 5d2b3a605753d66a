"""ONNX Runtime outputs equal PyTorch eager outputs within 1e-4.

Inputs are fresh random tensors at two batch sizes. The parity check uses a
float32 export; the shipped files store weights as float16 (after the exporter
has folded batch norms into the convolutions), which moves outputs by about
1e-3, so a second check bounds that storage error separately.
"""

import argparse

import numpy as np
import onnxruntime as ort
import torch

from shared import taxonomy
from training import export
from training.nets import ClassifierForExport, DetectorForExport, MultiTaskClassifier, build_detector

TOLERANCE = 1e-4
FP16_STORAGE_TOLERANCE = 1e-2


def run_onnx(path, images):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images.numpy()})


def classifier_case(tmp_path, fp16):
    torch.manual_seed(1)
    model = MultiTaskClassifier({"type": 7, "colour": 13})
    exportable = ClassifierForExport(model).eval()
    vocabularies = {"tasks": {"type": list("abcdefg"), "colour": list(taxonomy.COLOURS)}}
    path = export.export_classifier(exportable, tmp_path, "classifier-test", vocabularies, 160, fp16_weights=fp16)
    return exportable, path


def test_classifier_onnx_matches_eager(tmp_path):
    exportable, path = classifier_case(tmp_path, fp16=False)
    for batch in (1, 3):
        images = torch.randn(batch, 3, 160, 160)
        with torch.no_grad():
            expected = [t.numpy() for t in exportable(images)]
        for got, want in zip(run_onnx(path, images), expected):
            np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=TOLERANCE)


def test_classifier_fp16_storage_error_is_small(tmp_path):
    exportable, path = classifier_case(tmp_path, fp16=True)
    images = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        expected = [t.numpy() for t in exportable(images)]
    got = run_onnx(path, images)
    np.testing.assert_allclose(got[0], expected[0], atol=FP16_STORAGE_TOLERANCE)  # type probabilities
    np.testing.assert_allclose(got[2], expected[2], atol=FP16_STORAGE_TOLERANCE)  # embedding


def test_detector_onnx_matches_eager(tmp_path):
    torch.manual_seed(2)
    width, height = 256, 384
    detector = build_detector(len(taxonomy.DETECTOR_CLASSES), width, height).eval()
    exportable = DetectorForExport(detector, width, height).eval()
    args = argparse.Namespace(out=tmp_path, input_width=width, input_height=height, epochs=0)
    path = export.export_detector(exportable, args, [], 0, fp16_weights=False)
    for batch in (1, 2):
        images = torch.randn(batch, 3, height, width)
        with torch.no_grad():
            boxes, scores = (t.numpy() for t in exportable(images))
        got_boxes, got_scores = run_onnx(path, images)
        np.testing.assert_allclose(got_scores, scores, atol=TOLERANCE, rtol=TOLERANCE)
        # Boxes are in pixels (up to about 400), so the bound is relative.
        np.testing.assert_allclose(got_boxes, boxes, atol=TOLERANCE, rtol=TOLERANCE)
