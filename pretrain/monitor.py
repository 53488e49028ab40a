"""Watching a pre-training run: held-out evaluation, the log file and progress.png.

Kept apart from the loop so that each is short and testable. Evaluation runs on one process and
never calls a collective (the engine makes the other ranks wait at a barrier).
"""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


# --------------------------------------------------------------------------- evaluation
def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    hits = labels[order] > 0
    if not hits.any():
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


@torch.no_grad()
def evaluate(model, loader, criterion, rt) -> dict:
    """Tag mAP (over tags with a positive), InfoNCE over the whole split, image->text recall@1."""
    was_training = model.training
    model.eval()
    images, texts, logits, targets = [], [], [], []
    try:
        for batch in loader:
            with torch.autocast("cuda", dtype=rt.amp_dtype, enabled=rt.amp_dtype is not None):
                out = model(batch["image"].to(rt.device), batch["text"])
            images.append(out["image"].float())
            texts.append(out["text"].float())
            logits.append(out["tag_logits"].float())
            targets.append(batch["tags"].to(rt.device))
    finally:
        model.train(was_training)
    image, text, logit, target = map(torch.cat, (images, texts, logits, targets))
    scale = model.scale().float()
    contrastive = _plain_infonce(image, text, scale)  # rank 0 alone: no collective gather here
    tag = criterion.tag(logit, target)
    aps = [average_precision(logit[:, k].cpu().numpy(), target[:, k].cpu().numpy()) for k in range(logit.shape[1])]
    aps = [a for a in aps if not math.isnan(a)]
    recall = (image @ text.T).argmax(1).eq(torch.arange(len(image), device=image.device)).float().mean()
    return {"val_contrastive": float(contrastive), "val_tag": float(tag),
            "val_map": float(np.mean(aps)) if aps else float("nan"), "val_recall1": float(recall)}


def _plain_infonce(image, text, scale):
    labels = torch.arange(len(image), device=image.device)
    logits = scale * image @ text.T
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


# --------------------------------------------------------------------------- logging / plot
class RunLog:
    """Rank-0 log: stdout (through tqdm) + ``<run>/training_log.txt``.

    A log file that cannot be written (disk full) costs one warning on stderr, not the run: the
    save that follows will say what is wrong, in one line.
    """

    def __init__(self, run_dir: Path, active: bool):
        self.active, self.bar = active, None
        self.file = run_dir / "training_log.txt" if active else None

    def __call__(self, *msg) -> None:
        if not self.active:
            return
        text = " ".join(str(m) for m in msg)
        if self.file is not None:
            self._append(text)
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def _append(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)  # created by the first line: a run that
            with open(self.file, "a", encoding="utf-8") as f:      # fails on its input leaves no folder
                for line in text.splitlines() or [""]:
                    f.write(f"{stamp}: {line}\n")
        except OSError as e:
            print(f"mosmos-pretrain: warning: cannot write {self.file} ({e.strerror or e}); logging to stdout only",
                  file=sys.stderr, flush=True)
            self.file = None


def plot_progress(path: Path, history: list[dict], val_history: list[dict]) -> None:
    """progress.png: losses (train, val), temperature, held-out tag mAP / recall@1 over steps."""
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(10, 11), sharex=True)
    steps = [h["step"] for h in history]
    for key, style in (("loss", "b-"), ("contrastive", "g-"), ("tag", "m-"), ("organ", "y-"),
                       ("negative_free", "c-")):
        values = [h.get(key, 0.0) for h in history]
        if key in ("loss", "contrastive", "tag") or any(values):  # optional objectives only when on
            axes[0].plot(steps, values, style, label=f"train {key}")
    vsteps = [v["step"] for v in val_history]
    for key, style in (("val_contrastive", "g--"), ("val_tag", "m--")):
        if val_history:
            axes[0].plot(vsteps, [v[key] for v in val_history], style + "o", label=key)
    axes[0].set_ylabel("loss")
    axes[1].plot(steps, [h["temperature"] for h in history], "k-", label="temperature")
    axes[1].set_ylabel("temperature")
    if val_history:
        axes[2].plot(vsteps, [v["val_map"] for v in val_history], "r-o", label="held-out tag mAP")
        axes[2].plot(vsteps, [v["val_recall1"] for v in val_history], "c-o", label="held-out recall@1 (img->txt)")
    axes[2].set_ylabel("score")
    axes[2].set_xlabel("step")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    except OSError as e:  # the plot is a convenience: a full disk is reported by the save of last.pt
        tmp.unlink(missing_ok=True)
        print(f"mosmos-pretrain: warning: cannot write {path} ({e.strerror or e})", file=sys.stderr, flush=True)
    finally:
        plt.close(fig)
