"""Training plumbing shared by every model: checkpoints that resume, a metric
log per epoch, the training-curve plot, and the non-finite loss guard."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """Raised when a loss becomes NaN or infinite, which no later step can repair."""


def check_finite(loss: torch.Tensor, step: int) -> None:
    if not math.isfinite(float(loss)):
        raise NonFiniteLoss(f"loss is {float(loss)} at step {step}; lower the learning rate or check the data")


class RunDirectory:
    """A training run's folder: ``checkpoint.pt``, ``log.jsonl`` and ``curves.png``."""

    def __init__(self, path: Path):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.checkpoint_path = path / "checkpoint.pt"
        self.log_path = path / "log.jsonl"

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        temporary = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, temporary)
        temporary.replace(self.checkpoint_path)

    def load_checkpoint(self) -> dict[str, Any] | None:
        if not self.checkpoint_path.exists():
            return None
        log.info("resuming from %s", self.checkpoint_path)
        return torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)

    def log_epoch(self, record: dict[str, Any]) -> None:
        record = {"time": time.time(), **record}
        with open(self.log_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        log.info("epoch %s: %s", record.get("epoch"), {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items() if k != "time"})

    def read_log(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]

    def plot_curves(self, title: str, output: Path | None = None) -> Path:
        """Plot every numeric metric of the log against the epoch."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        records = self.read_log()
        keys = sorted({k for r in records for k, v in r.items() if isinstance(v, (int, float)) and k not in ("epoch", "time")})
        # Training figures (losses) on the left, validation metrics on the right.
        losses = [k for k in keys if k.startswith("train_") and not k.endswith("seconds")]
        others = [k for k in keys if k.startswith("val_")]
        figure, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, group, label in ((axes[0], losses, "loss"), (axes[1], others, "validation metric")):
            for key in group:
                points = [(r["epoch"], r[key]) for r in records if key in r]
                if points:
                    ax.plot(*zip(*points), marker="o", label=key)
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            if group:
                ax.legend(fontsize=7)
        figure.suptitle(title)
        figure.tight_layout()
        output = output or self.path / "curves.png"
        figure.savefig(output, dpi=90)
        plt.close(figure)
        return output
