"""LoRA targets of the backbone and the ways generated LoRA is applied.

Every block has six targets: q, k and v (slices of timm's fused qkv output), the
attention output projection, and the MLP's fc1 and fc2. For a target with frozen W, b:

    y = W x + b + s * B (A x),    A: (r, d_in), B: (d_out, r)

The ViT pass is written as functions over the timm modules' own parameters, with every
target linear routed through a ``TargetLinear`` callable. Three callables cover all uses:

* :func:`frozen_linear` -- the plain backbone (no LoRA),
* :class:`SegmentLoRA` -- shared base product for all rows plus a per-segment low-rank
  term; segments are volumes (training) or tasks (all-task inference),
* :class:`MergedLinear` -- one task's LoRA merged into the frozen weights, W + s B A.

They are exact rewrites of the same formula; tests compare them with each other and with
a reference written directly from it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hyperct_core.backbone import BackboneConfig
from hyperct_core.errors import DependencyError

__all__ = [
    "TARGET_TYPES",
    "Target",
    "lora_targets",
    "TargetLinear",
    "frozen_linear",
    "SegmentLoRA",
    "MergedLinear",
    "merge_task_weights",
    "embed_tokens",
    "qkv_bias",
    "attention_from_qkv",
    "block_tail",
    "block_forward",
    "vit_cls",
]

# Order is the module-type embedding's row order: part of the checkpoint format.
TARGET_TYPES: tuple[str, ...] = ("q", "k", "v", "proj", "fc1", "fc2")
# Which timm linear each target lives in, and the target's slice index within it.
_SITE_OF = {"q": ("qkv", 0), "k": ("qkv", 1), "v": ("qkv", 2)}
SITE_TARGETS = {"qkv": ("q", "k", "v"), "proj": ("proj",), "fc1": ("fc1",), "fc2": ("fc2",)}

#: A timm Eva model, block or attention module, read through the attributes timm gives it.
#: ``nn.Module.__getattr__`` types every such attribute ``Tensor | Module``, so these are Any.
TimmModule = Any

LoRAWeights = Mapping[str, tuple[Tensor, Tensor]]
"""Target name -> (A of shape (G, r, d_in), B of shape (G, d_out, r)), G tasks or volumes."""


@dataclass(frozen=True)
class Target:
    depth: int
    kind: str
    d_in: int
    d_out: int

    @property
    def name(self) -> str:
        return target_name(self.depth, self.kind)


def target_name(depth: int, kind: str) -> str:
    return f"blocks.{depth}.{kind}"


def target_dims(config: BackboneConfig) -> dict[str, tuple[int, int]]:
    """(d_in, d_out) of each target type."""
    d, h = config.embed_dim, config.mlp_hidden
    return {"q": (d, d), "k": (d, d), "v": (d, d), "proj": (d, d), "fc1": (d, h), "fc2": (h, d)}


def lora_targets(config: BackboneConfig) -> list[Target]:
    """All targets, depth-major: 6 per block (72 for ViT-B)."""
    dims = target_dims(config)
    return [Target(i, k, *dims[k]) for i in range(config.depth) for k in TARGET_TYPES]


class TargetLinear(Protocol):
    """Computes the (possibly adapted) output of one timm linear of block ``depth``."""

    def __call__(
        self, depth: int, site: str, x: Tensor, weight: Tensor, bias: Tensor | None
    ) -> Tensor: ...


def frozen_linear(depth: int, site: str, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return F.linear(x, weight, bias)


class SegmentLoRA:
    """Base product W x + b for all rows at once, plus s B_g (A_g x) per segment.

    ``x`` holds images along dim 0 in segment order; segment j spans ``sizes[j]`` images
    and uses LoRA group ``groups[j]`` (row of the G axis of ``weights``). When every
    segment has the same size and segment j uses group j (all-task inference) the
    low-rank terms run as batched matrix products.
    """

    def __init__(
        self,
        weights: LoRAWeights,
        sizes: Sequence[int],
        groups: Sequence[int] | None = None,
        scale: float = 1.0,
    ) -> None:
        self.weights = weights
        self.sizes = [int(n) for n in sizes]
        self.groups = list(range(len(self.sizes))) if groups is None else [int(g) for g in groups]
        self.scale = float(scale)
        self.uniform = groups is None and len(set(self.sizes)) == 1

    def __call__(
        self, depth: int, site: str, x: Tensor, weight: Tensor, bias: Tensor | None
    ) -> Tensor:
        return self.add_deltas(depth, site, x, F.linear(x, weight, bias))

    def add_deltas(self, depth: int, site: str, x: Tensor, y: Tensor) -> Tensor:
        """``y`` (the base product of ``x``) plus the low-rank terms of the site's targets.

        Without autograd the terms are added into ``y`` in place.
        """
        kinds = SITE_TARGETS[site]
        if not torch.is_grad_enabled():
            start = 0
            for k in kinds:
                delta = self.delta(x, *self.weights[target_name(depth, k)])
                y[..., start : start + delta.shape[-1]] += delta
                start += delta.shape[-1]
            return y
        deltas = [self.delta(x, *self.weights[target_name(depth, k)]) for k in kinds]
        return y + (deltas[0] if len(deltas) == 1 else torch.cat(deltas, dim=-1))

    def delta(self, x: Tensor, a: Tensor, b: Tensor) -> Tensor:
        """s * B (A x) for every row, each segment with its own A, B."""
        n_img, n_tok, d_in = x.shape
        if self.uniform:
            g = len(self.sizes)
            xs = x.reshape(g, -1, d_in)
            low = torch.bmm(xs, a.transpose(1, 2))
            out = torch.bmm(low, b.transpose(1, 2))
            if self.scale != 1.0:
                out = out * self.scale
            return out.reshape(n_img, n_tok, -1)
        parts = []
        start = 0
        for size, g in zip(self.sizes, self.groups, strict=True):
            xs = x[start : start + size]
            parts.append(((xs @ a[g].T) @ b[g].T) * self.scale)
            start += size
        return torch.cat(parts, dim=0)


class MergedLinear:
    """Plain linears with one task's merged weights (site key: ``(depth, site)``)."""

    def __init__(self, weights: Mapping[tuple[int, str], Tensor]) -> None:
        self.weights = weights

    def __call__(
        self, depth: int, site: str, x: Tensor, weight: Tensor, bias: Tensor | None
    ) -> Tensor:
        merged = self.weights.get((depth, site))
        return F.linear(x, weight if merged is None else merged, bias)


def merge_task_weights(
    backbone: TimmModule,
    weights: LoRAWeights,
    task: int,
    scale: float,
    *,
    master: Mapping[tuple[int, str], Tensor] | None = None,
    dtype: torch.dtype | None = None,
    skip: Sequence[tuple[int, str]] = (),
) -> dict[tuple[int, str], Tensor]:
    """W + s B A for every site of one task (row ``task`` of the G axis).

    ``master`` supplies fp32 frozen weights when the backbone runs in a lower precision,
    so the merge is computed in fp32 and rounded once. ``skip`` lists sites left unmerged.
    """
    out: dict[tuple[int, str], Tensor] = {}
    for depth, blk in enumerate(backbone.blocks):
        for site, module in _site_modules(blk).items():
            if (depth, site) in skip:
                continue
            base = master[(depth, site)] if master is not None else module.weight
            kinds = SITE_TARGETS[site]
            if len(kinds) == 1:
                a, b = weights[target_name(depth, kinds[0])]
                merged = torch.addmm(
                    base, b[task].to(base.dtype), a[task].to(base.dtype), alpha=scale
                )
            else:
                merged = base.clone()
                rows = 0
                for kind in kinds:
                    a, b = weights[target_name(depth, kind)]
                    d_out = b.shape[-2]
                    merged[rows : rows + d_out].addmm_(
                        b[task].to(base.dtype), a[task].to(base.dtype), alpha=scale
                    )
                    rows += d_out
            out[(depth, site)] = merged.to(dtype or module.weight.dtype)
    return out


def _site_modules(blk: TimmModule) -> dict[str, nn.Linear]:
    return {"qkv": blk.attn.qkv, "proj": blk.attn.proj, "fc1": blk.mlp.fc1, "fc2": blk.mlp.fc2}


def site_weights(backbone: TimmModule) -> dict[tuple[int, str], Tensor]:
    """The frozen weight of every site, keyed like :class:`MergedLinear`."""
    return {
        (depth, site): m.weight
        for depth, blk in enumerate(backbone.blocks)
        for site, m in _site_modules(blk).items()
    }


# --- the ViT pass over timm's Eva modules -------------------------------------------

#: The timm release whose Eva internals (``_pos_embed``, the blocks' attributes) the pass
#: below reads; setup.cfg pins the same one. Private methods carry no promise between
#: releases, so another release is refused rather than trusted.
TIMM_VERSION = "1.0.31"


def check_timm_version() -> None:
    """Refuse a timm release the functional pass was not written for."""
    import timm

    if timm.__version__ != TIMM_VERSION:
        raise DependencyError(
            f"timm {timm.__version__} is installed but the model supports only {TIMM_VERSION} "
            "(it calls timm's private Eva internals); install with -c constraints.txt"
        )


def check_supported(backbone: nn.Module) -> None:
    """The functional pass below covers DINOv3's Eva blocks; refuse anything else."""
    check_timm_version()
    from timm.layers import Mlp
    from timm.models.eva import Eva, EvaAttention, EvaBlock

    if not isinstance(backbone, Eva):
        raise TypeError("backbone must be a timm Eva model")
    for blk in backbone.blocks:
        if not (isinstance(blk, EvaBlock) and isinstance(blk.attn, EvaAttention)):
            raise TypeError("unsupported block type in backbone")
        if blk.attn.qkv is None or blk.attn.gate is not None or not isinstance(blk.mlp, Mlp):
            raise TypeError("backbone blocks need fused qkv, no gate and a plain MLP")


def embed_tokens(backbone: TimmModule, images: Tensor) -> tuple[Tensor, Tensor | None]:
    """Patch embedding, CLS/register tokens and the RoPE table (shared by every task)."""
    x = backbone.patch_embed(images)
    # timm's own token assembly (cls + registers + patches, RoPE for this grid size).
    x, rope = backbone._pos_embed(x)
    return backbone.norm_pre(x), rope


def qkv_bias(attn: TimmModule) -> Tensor | None:
    if attn.q_bias is None:
        return None
    return torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))


def attention_from_qkv(
    blk: TimmModule,
    depth: int,
    qkv: Tensor,
    rope: Tensor | None,
    linear: TargetLinear,
    cls_only: bool = False,
) -> Tensor:
    """Multi-head attention with RoPE on patch tokens, then the output projection.

    With ``cls_only`` only the CLS token queries (keys and values keep every token): the
    last block's other outputs never reach the CLS token, so this is exact.
    """
    from timm.layers import apply_rot_embed_cat

    attn = blk.attn
    b, n, _ = qkv.shape
    q, k, v = qkv.reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if rope is not None:
        npt = attn.num_prefix_tokens
        half = attn.rotate_half
        q = torch.cat([q[:, :, :npt], apply_rot_embed_cat(q[:, :, npt:], rope, half=half)], 2)
        k = torch.cat([k[:, :, :npt], apply_rot_embed_cat(k[:, :, npt:], rope, half=half)], 2)
        q, k = q.type_as(v), k.type_as(v)
    if cls_only:
        q = q[:, :, :1]
    o = F.scaled_dot_product_attention(q, k, v)
    o = attn.norm(o.transpose(1, 2).reshape(b, q.shape[2], -1))
    return linear(depth, "proj", o, attn.proj.weight, attn.proj.bias)


def block_tail(
    blk: TimmModule, depth: int, x: Tensor, attn_out: Tensor, linear: TargetLinear
) -> Tensor:
    """Residual of the attention branch, then the MLP branch (LayerScale on both)."""
    if blk.gamma_1 is not None:
        attn_out = blk.gamma_1 * attn_out
    x = x + attn_out
    mlp = blk.mlp
    h = linear(depth, "fc1", blk.norm2(x), mlp.fc1.weight, mlp.fc1.bias)
    h = mlp.norm(mlp.act(h))
    h = linear(depth, "fc2", h, mlp.fc2.weight, mlp.fc2.bias)
    if blk.gamma_2 is not None:
        h = blk.gamma_2 * h
    return x + h


def block_forward(
    blk: TimmModule,
    depth: int,
    x: Tensor,
    rope: Tensor | None,
    linear: TargetLinear,
    cls_only: bool = False,
) -> Tensor:
    """One block; with ``cls_only`` it returns only the CLS row (see attention_from_qkv)."""
    qkv = linear(depth, "qkv", blk.norm1(x), blk.attn.qkv.weight, qkv_bias(blk.attn))
    attn_out = attention_from_qkv(blk, depth, qkv, rope, linear, cls_only)
    return block_tail(blk, depth, x[:, :1] if cls_only else x, attn_out, linear)


def vit_cls(backbone: TimmModule, images: Tensor, linear: TargetLinear = frozen_linear) -> Tensor:
    """CLS token after the final norm, for images (n, 3, H, W), every target via ``linear``."""
    x, rope = embed_tokens(backbone, images)
    last = len(backbone.blocks) - 1
    for depth, blk in enumerate(backbone.blocks):
        x = block_forward(blk, depth, x, rope, linear, cls_only=depth == last)
    return backbone.norm(x[:, 0])
