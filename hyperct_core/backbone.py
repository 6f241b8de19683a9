"""The frozen DINOv3 ViT backbone: construction from a config and weight loading.

The backbone is timm's Eva implementation of DINOv3 (``vit_base_patch16_dinov3``: fused
qkv without bias, 1 CLS + 4 register tokens, RoPE, LayerScale). Its size is a
configuration choice so tests and demos can build a tiny one with the same structure.

Pretrained weights are gated upstream and never downloaded here: they come from a local
file the operator provides, in one of three layouts:

* timm (``blocks.N.attn.qkv.weight``, ``reg_token``, ``blocks.N.gamma_1`` ...),
* Hugging Face ``DINOv3ViTModel`` safetensors (``layer.N.attention.q_proj.weight``,
  ``embeddings.register_tokens``, ``layer.N.layer_scale1.lambda1`` ...),
* Meta's original release (``storage_tokens``, ``blocks.N.ls1.gamma`` ...), converted by
  timm's own filter.

Random initialisation happens only when a caller asks for it explicitly.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hyperct_core.errors import CheckpointError

__all__ = [
    "BackboneConfig",
    "create_backbone",
    "load_backbone_weights",
    "read_state_dict",
    "hf_to_timm_state_dict",
]


@dataclass(frozen=True)
class BackboneConfig:
    """Architecture of the frozen ViT; ``vit_base_patch16_dinov3`` by default."""

    timm_name: str = "vit_base_patch16_dinov3"
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    num_reg_tokens: int = 4
    img_size: int = 144
    qkv_bias: bool = False

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + self.num_reg_tokens

    @property
    def identity(self) -> str:
        """What a model card calls this backbone: the timm name, qualified when reduced."""
        if replace(self, img_size=BackboneConfig.img_size) == BackboneConfig(
            timm_name=self.timm_name
        ):
            return self.timm_name
        return (
            f"{self.timm_name} structure, reduced: {self.embed_dim} wide, {self.depth} blocks, "
            f"{self.num_heads} heads, patch {self.patch_size}"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackboneConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise CheckpointError(f"unknown backbone config fields: {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def tiny(cls, embed_dim: int = 64, depth: int = 2, num_heads: int = 2) -> BackboneConfig:
        """A small backbone with the ViT-B structure, for tests and demo models."""
        return cls(embed_dim=embed_dim, depth=depth, num_heads=num_heads)


def create_backbone(
    config: BackboneConfig,
    weights: str | Path | None = None,
    *,
    random_init: bool = False,
) -> nn.Module:
    """Build the frozen backbone in eval mode.

    Args:
        config: Architecture.
        weights: Local weight file (timm, Hugging Face or Meta layout).
        random_init: Must be True to get random weights when ``weights`` is None
            (tests and demo models only).
    """
    if weights is None and not random_init:
        raise CheckpointError(
            "no backbone weights given (pass a local weight file; random weights are for demos)"
        )
    import timm

    model = timm.create_model(
        config.timm_name,
        pretrained=False,
        num_classes=0,
        img_size=config.img_size,
        embed_dim=config.embed_dim,
        depth=config.depth,
        num_heads=config.num_heads,
        mlp_ratio=config.mlp_ratio,
        patch_size=config.patch_size,
        num_reg_tokens=config.num_reg_tokens,
        qkv_bias=config.qkv_bias,
    )
    if weights is not None:
        load_backbone_weights(model, read_state_dict(weights))
    model.requires_grad_(False)
    model.eval()
    return model


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weight file (safetensors, or a torch pickle of tensors only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"backbone weight file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors/pickle errors carry no common base class
        raise CheckpointError(f"unreadable backbone weight file {path.name}: {exc}") from None
    for key in ("model_ema", "model", "module", "state_dict", "teacher"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path.name} is not a state dict of tensors")
    return obj


def _strip_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Models saved from a wrapper carry its attribute name in front of every key.
    for prefix in ("dinov3_vit.", "backbone.", "model.", "module."):
        if sd and all(k.startswith(prefix) for k in sd):
            return {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def _is_hf_layout(sd: dict[str, torch.Tensor]) -> bool:
    return "embeddings.cls_token" in sd or any(k.startswith("layer.") for k in sd)


_HF_LAYER = re.compile(r"^layer\.(\d+)\.(.+)$")
_HF_RENAME = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "attention.o_proj.weight": "attn.proj.weight",
    "attention.o_proj.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "gamma_1",
    "layer_scale2.lambda1": "gamma_2",
    "mlp.up_proj.weight": "mlp.fc1.weight",
    "mlp.up_proj.bias": "mlp.fc1.bias",
    "mlp.down_proj.weight": "mlp.fc2.weight",
    "mlp.down_proj.bias": "mlp.fc2.bias",
}
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.register_tokens": "reg_token",
    "embeddings.patch_embeddings.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.bias": "patch_embed.proj.bias",
    "norm.weight": "norm.weight",
    "norm.bias": "norm.bias",
}
# Pretraining-only or recomputed entries of the HF layout.
_HF_DROP = {"embeddings.mask_token", "rope_embeddings.inv_freq"}


def hf_to_timm_state_dict(
    sd: dict[str, torch.Tensor], *, qkv_bias: bool = False
) -> dict[str, torch.Tensor]:
    """Map a Hugging Face ``DINOv3ViTModel`` state dict onto timm's Eva layout.

    HF keeps q/k/v as separate linears; timm fuses them row-wise in q, k, v order.
    The distilled ViT-B release stores all-zero q/v biases (k has none); timm's
    ``vit_base_patch16_dinov3`` has no qkv bias, so zero biases are dropped and non-zero
    ones require ``qkv_bias=True``. Gated (SwiGLU) MLPs are not part of ViT-B.
    """
    sd = _strip_prefix(sd)
    out: dict[str, torch.Tensor] = {}
    qkv: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key in _HF_DROP:
            continue
        if key in _HF_TOP:
            out[_HF_TOP[key]] = value
            continue
        m = _HF_LAYER.match(key)
        if m is None:
            raise CheckpointError(f"unexpected key in Hugging Face DINOv3 weights: {key}")
        i, rest = int(m.group(1)), m.group(2)
        if rest in _HF_RENAME:
            out[f"blocks.{i}.{_HF_RENAME[rest]}"] = value
        elif rest.startswith("attention.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
            _, proj, kind = rest.split(".")
            qkv.setdefault(i, {})[f"{proj[0]}_{kind}"] = value
        else:
            raise CheckpointError(f"unsupported key in Hugging Face DINOv3 weights: {key}")
    for i, parts in sorted(qkv.items()):
        try:
            out[f"blocks.{i}.attn.qkv.weight"] = torch.cat(
                [parts["q_weight"], parts["k_weight"], parts["v_weight"]], dim=0
            )
        except KeyError:
            raise CheckpointError(f"layer {i} lacks one of q/k/v_proj.weight") from None
        k_bias = parts.get("k_bias")
        if k_bias is not None and bool(k_bias.any()):
            raise CheckpointError(f"layer {i} has a non-zero key bias, which DINOv3 masks out")
        for name in ("q", "v"):
            bias = parts.get(f"{name}_bias")
            if qkv_bias:
                out[f"blocks.{i}.attn.{name}_bias"] = (
                    bias if bias is not None else torch.zeros(parts[f"{name}_weight"].shape[0])
                )
            elif bias is not None and bool(bias.any()):
                raise CheckpointError(
                    f"layer {i} has a non-zero {name} bias; use a backbone config with qkv_bias"
                )
    return out


def load_backbone_weights(model: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """Load a state dict in any supported layout into a timm Eva backbone (strict)."""
    sd = _strip_prefix(dict(sd))
    if _is_hf_layout(sd):
        sd = hf_to_timm_state_dict(
            sd, qkv_bias=getattr(model.get_submodule("blocks.0.attn"), "q_bias", None) is not None
        )
    elif "storage_tokens" in sd:
        from timm.models.eva import checkpoint_filter_fn

        sd = checkpoint_filter_fn(sd, model)
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    wrong = sorted(k for k in set(own) & set(sd) if own[k].shape != sd[k].shape)
    if missing or unexpected or wrong:
        detail = (missing[:1] and f"missing {missing[0]}") or (
            unexpected[:1] and f"unexpected {unexpected[0]}"
        )
        if not detail:
            k = wrong[0]
            detail = f"{k} is {tuple(sd[k].shape)}, expected {tuple(own[k].shape)}"
        raise CheckpointError(
            f"backbone weights do not match the configured architecture "
            f"({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} misshapen; "
            f"{detail})"
        )
    model.load_state_dict(sd, strict=True)
