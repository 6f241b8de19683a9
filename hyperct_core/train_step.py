"""One training step's pieces: the forward pass as training runs it, and what feeds it.

* :func:`forward_logits`: ``model(images, tasks)``, optionally with activation
  checkpointing through the backbone (:func:`checkpointed_cls`); same values and
  gradients, one more backbone forward pass, activations of one block at a time;
* :func:`autocast`: bf16 autocast where training uses it (CUDA);
* :func:`plan_epoch`: the epoch's shuffled steps, each volume with its augmentation seed;
* :func:`val_scores` and :func:`auc_report`: validation probabilities and AUCs;
* :class:`Progress`: the optional progress bar.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from hyperct_core.dataset import ManifestRow, StepPlan
from hyperct_core.lora import SegmentLoRA, TargetLinear, block_forward, embed_tokens, frozen_linear
from hyperct_core.metrics import roc_auc
from hyperct_core.model import HyperCT, flatten_batch, segment_mean
from hyperct_core.tasks import TASK_NAMES

__all__ = [
    "Progress",
    "auc_report",
    "autocast",
    "checkpointed_cls",
    "default_workers",
    "forward_logits",
    "plan_epoch",
    "val_scores",
]


class Progress:
    """tqdm when asked for and available; silent otherwise."""

    def __init__(self, enabled: bool, total: int, desc: str) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=True, dynamic_ncols=True)

    def update(self, **postfix: Any) -> None:
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(1)

    def close(self, **postfix: Any) -> None:
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(postfix)
            self.bar.close()


def checkpointed_cls(
    backbone: nn.Module, images: torch.Tensor, linear: TargetLinear = frozen_linear
) -> torch.Tensor:
    """:func:`hyperct_core.lora.vit_cls` with every block recomputed in the backward pass.

    Non-reentrant checkpointing: gradients still reach the LoRA factors ``linear``
    holds (they are not block inputs), and the frozen backbone needs no input grad.
    """
    from torch.utils.checkpoint import checkpoint

    x, rope = embed_tokens(backbone, images)
    blocks: Any = backbone.blocks
    last = len(blocks) - 1
    for depth, blk in enumerate(blocks):
        x = checkpoint(
            block_forward, blk, depth, x, rope, linear, depth == last, use_reentrant=False
        )
    norm: Any = backbone.norm
    return norm(x[:, 0])


def forward_logits(
    model: HyperCT,
    images: Sequence[torch.Tensor],
    tasks: torch.Tensor,
    *,
    checkpointing: bool = False,
) -> torch.Tensor:
    """Logits (V,) of each volume under its task: ``model(images, tasks)``, optionally
    with activation checkpointing through the backbone (same values and gradients)."""
    if not checkpointing:
        return model(list(images), tasks)
    flat, sizes = flatten_batch(list(images))
    tasks = torch.as_tensor(tasks, device=flat.device).reshape(-1)
    unique, groups = torch.unique(tasks, return_inverse=True)
    lora = SegmentLoRA(model.generate_lora(unique), sizes, groups.tolist(), model.config.lora_scale)
    features = segment_mean(checkpointed_cls(model.backbone, flat, lora), sizes)
    return model.classifier(features).squeeze(-1)


def autocast(device: torch.device, enabled: bool) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def val_scores(
    model: HyperCT,
    images: Sequence[torch.Tensor],
    rows: Sequence[ManifestRow],
    tasks: Sequence[int],
    batch: int,
    device: torch.device,
    amp: bool,
) -> np.ndarray:
    """Probabilities (N, 25), NaN outside ``tasks`` and where the row has no label."""
    out = np.full((len(rows), len(TASK_NAMES)), np.nan)
    model.eval()
    with torch.inference_mode(), autocast(device, amp):
        for t in tasks:
            idx = [i for i, r in enumerate(rows) if not np.isnan(r.labels[t])]
            for j in range(0, len(idx), batch):
                chunk = idx[j : j + batch]
                imgs = [images[i].to(device, non_blocking=True) for i in chunk]
                logits = model(imgs, torch.full((len(chunk),), t, device=device))
                out[chunk, t] = torch.sigmoid(logits.float()).cpu().numpy()
    return out


def plan_epoch(
    plan: StepPlan, n_rows: int, batch_size: int, rng: np.random.Generator
) -> list[list[int]]:
    """Shuffle the rows, seed each volume's augmentation; return each step's row indices."""
    order = rng.permutation(n_rows)
    seeds = rng.integers(0, 2**63 - 1, size=n_rows)
    plan.steps = [
        [(int(order[i]), int(seeds[i])) for i in range(s, min(s + batch_size, n_rows))]
        for s in range(0, n_rows, batch_size)
    ]
    return [[i for i, _ in step] for step in plan.steps]


def default_workers(device: torch.device) -> int:
    """Loader processes: none on the CPU (the model wants every core), a few for a GPU."""
    if device.type == "cpu":
        return 0
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def auc_report(scores: np.ndarray, rows: Sequence[ManifestRow], tasks: Sequence[int]) -> dict:
    y = np.stack([r.labels for r in rows])
    per_task = {}
    for t in tasks:
        known = ~np.isnan(y[:, t])
        per_task[TASK_NAMES[t]] = roc_auc(y[known, t], scores[known, t])
    values = [v for v in per_task.values() if not math.isnan(v)]
    return {"mean_auc": float(np.mean(values)) if values else float("nan"), "auc": per_task}
