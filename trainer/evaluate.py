"""Evaluation on the held-out set, and the run's eval history (checkpointed)."""

from __future__ import annotations

import itertools
import math

import torch

from trainer import distributed
from trainer.build import Run
from trainer.step import model_loss, to_device


@torch.no_grad()
def evaluate(run: Run) -> dict[str, float]:
    """Mean loss over up to trainer.eval_batches batches of the held-out set (of each rank's share);
    with labels, also accuracy and F1 (of class 1 with two classes, else the mean over classes)."""
    run.model.eval()
    classes = run.cfg.model.get("num_labels") or 0
    # loss sum, batches, then the confusion matrix (true x predicted) when there are labels
    total = torch.zeros(2 + classes * classes, device=run.device)
    for batch in itertools.islice(run.eval_loader, run.cfg.trainer.eval_batches):
        batch = to_device(batch, run.device)
        with run.precision.autocast():
            if classes and "labels" in batch:
                loss, logits = run.model(**batch, return_logits=True)
                pairs = batch["labels"] * classes + logits.argmax(-1)
                total[2:] += torch.bincount(pairs, minlength=classes * classes).float()
            else:
                loss = model_loss(run.model(**batch))[0]
        total[0] += loss.float()
        total[1] += 1
    run.model.train()
    host = distributed.all_reduce_sum(total).tolist()
    out = {"eval/loss": host[0] / max(host[1], 1)}
    if classes:
        out.update(classification_metrics(torch.tensor(host[2:]).view(classes, classes)))
    return out


def classification_metrics(confusion: torch.Tensor) -> dict[str, float]:
    """Accuracy and F1 from a confusion matrix (rows: true class, columns: predicted)."""
    tp = confusion.diag()
    precision = tp / confusion.sum(0).clamp(min=1)
    recall = tp / confusion.sum(1).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    return {"eval/accuracy": float(tp.sum() / confusion.sum().clamp(min=1)),
            "eval/f1": float(f1[1] if len(f1) == 2 else f1.mean())}


class EvalHistory:
    """Every eval loss of the run (checkpointed: the best one survives a resume) and the last eval's metrics."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.last: dict[str, float] = {}

    def add(self, metrics: dict[str, float]) -> None:
        self.losses.append(metrics["eval/loss"])
        self.last = metrics

    def summary(self) -> dict[str, float]:
        """The summary's eval lines: final and best loss, and the last eval's other metrics."""
        finite = [x for x in self.losses if math.isfinite(x)]
        return {
            "final eval loss": self.losses[-1] if self.losses else float("nan"),
            "best eval loss": min(finite) if finite else float("nan"),
            **{f"final {tag.replace('/', ' ')}": value for tag, value in self.last.items() if tag != "eval/loss"},
        }

    # A plain list, as 0.1.0 stored it under "eval_losses".
    def state_dict(self) -> list[float]:
        return list(self.losses)

    def load_state_dict(self, losses: list[float]) -> None:
        self.losses = list(losses)
