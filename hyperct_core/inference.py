"""All-task inference: one call screens a batch of studies for every task.

Every task adapts every layer, so a study costs (tasks x images) backbone image passes.
What can be shared exactly is shared:

* the generated A/B of a checkpoint are constant: computed once when the predictor is
  built;
* patch embedding, tokens and the first block's norm1 and frozen qkv product see the same
  input for every task: computed once per image; each task adds only its rank-r terms;
* only the CLS token leaves the model: the last block's attention output, MLP and final
  norm run on the CLS row only (keys and values still cover every token);
* padded images are dropped before the backbone.

Two exact strategies for the rest, chosen per device (``strategy="auto"``):

* ``"merge"`` (CPU): per task, W + s B A merged into the frozen weights, then plain
  linears; the per-task cost equals the plain backbone's plus a rank-r merge.
* ``"lowrank"`` (GPU): all tasks stacked in one batch; each frozen product is one large
  matrix product over every task's rows, plus batched rank-r terms per task.

bf16 runs the backbone in bfloat16 (merges computed in fp32 and rounded once); pooling
and the classifier stay in fp32.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hyperct_core.lora import (
    MergedLinear,
    SegmentLoRA,
    TargetLinear,
    TimmModule,
    attention_from_qkv,
    block_forward,
    block_tail,
    embed_tokens,
    merge_task_weights,
    qkv_bias,
    site_weights,
    target_name,
)
from hyperct_core.model import HyperCT, flatten_batch, segment_mean

__all__ = ["Predictor", "load_predictor", "resolve_device", "resolve_dtype"]

STRATEGIES = ("merge", "lowrank")
# bf16 is used only where probabilities stay this close to fp32 (HyperCT spec).
BF16_TOLERANCE = 0.01
BF16_PROBE_IMAGES = 2


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The device rule of every command (:func:`hyperct_core.device.resolve_device`)."""
    from hyperct_core.device import resolve_device as resolve

    return resolve(device)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``"auto"``: bf16 where the hardware has native bf16 matrix units, else fp32.

    On a CPU that is AVX512-BF16 or AMX (:func:`hyperct_core.device.cpu_has_native_bf16`);
    oneDNN also "supports" bf16 on plain AVX512 by emulation, slower than fp32.
    """
    from hyperct_core.device import cpu_has_native_bf16

    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16}  # fmt: skip
    if dtype in names:
        return names[dtype]
    if dtype != "auto":
        raise ValueError(f"unknown dtype {dtype!r} (auto, fp32 or bf16)")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


#: Below this backbone width, ``dtype="auto"`` keeps fp32 on CPU.
BF16_MIN_WIDTH_CPU = 384


def _width(model: HyperCT) -> int:
    return int(model.config.backbone.embed_dim)


class Predictor:
    """Screens studies for all tasks with one model; the agent's only entry point.

    Attributes:
        card: The checkpoint's model card (task names in output order, thresholds ...).
    """

    def __init__(
        self,
        model: HyperCT,
        card: object = None,
        *,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        strategy: str = "auto",
        images_per_pass: int = 64,
        copy_model: bool = True,
        bf16_min_width: int = BF16_MIN_WIDTH_CPU,
    ) -> None:
        self.card = card
        self.device = resolve_device(device)
        if strategy == "auto":
            strategy = "merge" if self.device.type == "cpu" else "lowrank"
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r} (one of {STRATEGIES})")
        self.strategy = strategy
        self.images_per_pass = int(images_per_pass)
        model = copy.deepcopy(model) if copy_model else model
        self.model = model.eval().to(self.device)
        self.scale = model.config.lora_scale
        self.num_tasks = model.config.hypernet.num_tasks
        with torch.inference_mode():
            # Constant per checkpoint: generated once, reused by every call.
            lora = model.generate_lora(torch.arange(self.num_tasks, device=self.device))
        self._lora_fp32 = {
            k: (a.float().contiguous(), b.float().contiguous()) for k, (a, b) in lora.items()
        }
        self._fp32_sites = {
            k: w.detach().float().clone() for k, w in site_weights(model.backbone).items()
        }
        self.bf16_probe_diff: float | None = None
        wanted = resolve_dtype(dtype, self.device)
        if dtype == "auto" and self.device.type == "cpu" and _width(model) < bf16_min_width:
            # Small matrices gain nothing from bf16 on CPU, and oneDNN's per-shape
            # bf16 kernel set-up costs seconds per new study size.
            wanted = torch.float32
        if dtype == "auto" and wanted == torch.bfloat16:
            wanted = self._probe_bf16()
        self._set_dtype(wanted)
        if wanted == torch.float32:  # the backbone holds them: drop the copy
            self._fp32_sites = site_weights(self.model.backbone)

    def _set_dtype(self, dtype: torch.dtype) -> None:
        """Cast the backbone and cached A/B; keeps fp32 frozen weights for merging."""
        self.dtype = dtype
        self.model.backbone.float()
        with torch.no_grad():
            for key, w in site_weights(self.model.backbone).items():
                w.copy_(self._fp32_sites[key])  # undo any earlier bf16 rounding
        self.model.backbone.to(dtype)
        self._lora = {k: (a.to(dtype), b.to(dtype)) for k, (a, b) in self._lora_fp32.items()}
        # Merges run in the compute dtype on the rounded frozen weights (one bf16 addmm,
        # fp32 accumulation): half the memory traffic of an fp32 merge, same rounding order.
        self._master = None

    def _probe_bf16(self) -> torch.dtype:
        """bf16 only if it keeps probabilities within half the 0.01 bar on a probe study.

        The probe is a fixed synthetic study; half the bar leaves room for real inputs.
        """
        size = self.model.config.backbone.img_size
        g = torch.Generator().manual_seed(0)
        probe = [torch.randn(BF16_PROBE_IMAGES, 3, size, size, generator=g)]
        backbone = self.model.backbone
        fp32_state = {k: v.detach().float().clone() for k, v in backbone.state_dict().items()}
        self._set_dtype(torch.float32)
        ref = self.predict(probe)
        self._set_dtype(torch.bfloat16)
        self.bf16_probe_diff = float(np.abs(self.predict(probe) - ref).max())
        if self.bf16_probe_diff <= BF16_TOLERANCE / 2:
            return torch.bfloat16
        backbone.float().load_state_dict(fp32_state)  # undo bf16 rounding everywhere
        return torch.float32

    @property
    def task_names(self) -> list[str]:
        tasks = getattr(self.card, "tasks", None)
        return list(tasks) if tasks else [f"task_{i}" for i in range(self.num_tasks)]

    def predict(self, batch: Sequence[Tensor] | Tensor, mask: Tensor | None = None) -> np.ndarray:
        """Probabilities (N, tasks) for N studies, columns in task index order.

        ``batch`` is a list of (n_i, 3, H, W) image tensors, or a padded
        (N, n_max, 3, H, W) tensor with its boolean (N, n_max) ``mask``.
        """
        flat, sizes = flatten_batch(batch if isinstance(batch, Tensor) else list(batch), mask)
        with torch.inference_mode():
            cls = self.task_cls(flat)  # (tasks, images, D), fp32
            pooled = torch.stack([segment_mean(c, sizes) for c in cls])
            logits = self.model.classifier(pooled).squeeze(-1)  # (tasks, N)
            return torch.sigmoid(logits).T.float().cpu().numpy()

    def task_cls(self, flat: Tensor) -> Tensor:
        """CLS features of every image under every task: (tasks, images, D) in fp32."""
        flat = flat.to(self.device, self.dtype)
        chunks = flat.split(self.images_per_pass)
        if self.strategy == "merge":
            return self._cls_merge(chunks)
        return torch.cat([self._cls_lowrank(c) for c in chunks], dim=1)

    # --- shared first steps --------------------------------------------------------

    def _shared_start(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Tokens, block 0's norm1 and frozen qkv product: identical for every task."""
        bb: TimmModule = self.model.backbone
        blk0 = bb.blocks[0]
        x0, rope = embed_tokens(bb, images)
        h0 = blk0.norm1(x0)
        base = F.linear(h0, blk0.attn.qkv.weight, qkv_bias(blk0.attn))
        return x0, h0, base, rope

    def _finish(self, x0: Tensor, qkv: Tensor, rope: Tensor | None, linear: TargetLinear) -> Tensor:
        """From block 0's adapted qkv to the normed CLS token."""
        bb: TimmModule = self.model.backbone
        last = len(bb.blocks) - 1
        blk0 = bb.blocks[0]
        attn = attention_from_qkv(blk0, 0, qkv, rope, linear, cls_only=last == 0)
        x = block_tail(blk0, 0, x0[:, :1] if last == 0 else x0, attn, linear)
        for depth in range(1, last + 1):
            x = block_forward(bb.blocks[depth], depth, x, rope, linear, cls_only=depth == last)
        return bb.norm(x[:, 0]).float()

    # --- strategies ----------------------------------------------------------------

    def _cls_merge(self, chunks: Sequence[Tensor]) -> Tensor:
        bb: TimmModule = self.model.backbone
        shared = [self._shared_start(c) for c in chunks]
        n_img = sum(c.shape[0] for c in chunks)
        out = torch.empty(self.num_tasks, n_img, bb.num_features, device=self.device)
        for task in range(self.num_tasks):
            merged = merge_task_weights(
                bb, self._lora, task, self.scale,
                master=self._master, dtype=self.dtype, skip=[(0, "qkv")],
            )  # fmt: skip
            linear = MergedLinear(merged)
            first = SegmentLoRA(
                {target_name(0, k): (a[task : task + 1], b[task : task + 1])
                 for k in ("q", "k", "v") for a, b in [self._lora[target_name(0, k)]]},
                sizes=[1], scale=self.scale,
            )  # fmt: skip
            row = 0
            for x0, h0, base, rope in shared:
                first.sizes = [x0.shape[0]]
                qkv = first.add_deltas(0, "qkv", h0, base.clone())
                out[task, row : row + x0.shape[0]] = self._finish(x0, qkv, rope, linear)
                row += x0.shape[0]
        return out

    def _cls_lowrank(self, images: Tensor) -> Tensor:
        n, t = images.shape[0], self.num_tasks
        x0, h0, base, rope = self._shared_start(images)
        _, n_tok, width = base.shape
        qkv = base.unsqueeze(0).repeat(t, 1, 1, 1)  # (tasks, n, tokens, 3D)
        rows = h0.reshape(1, n * n_tok, -1)
        qkv_rows = qkv.view(t, n * n_tok, width)
        start = 0
        for kind in ("q", "k", "v"):
            a, b = self._lora[target_name(0, kind)]
            d_out = b.shape[1]
            low = torch.matmul(rows, a.transpose(1, 2))  # (tasks, rows, r), h0 shared
            qkv_rows[..., start : start + d_out].baddbmm_(low, b.transpose(1, 2), alpha=self.scale)
            start += d_out
        x0_all = x0.unsqueeze(0).expand(t, -1, -1, -1).reshape(t * n, n_tok, -1)
        linear = SegmentLoRA(self._lora, sizes=[n] * t, scale=self.scale)
        cls = self._finish(x0_all, qkv.reshape(t * n, n_tok, width), rope, linear)
        return cls.reshape(t, n, -1)


def load_predictor(
    path: str | Path,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    *,
    backbone_path: str | Path | None = None,
    strategy: str = "auto",
) -> Predictor:
    """Load a checkpoint and get it ready to screen studies for every task."""
    from hyperct_core.checkpoint import load_checkpoint

    model, card = load_checkpoint(path, backbone_path=backbone_path)
    return Predictor(model, card, device=device, dtype=dtype, strategy=strategy, copy_model=False)
