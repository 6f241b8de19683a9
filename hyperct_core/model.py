"""HyperCT: frozen DINOv3 ViT + hypernetwork LoRA per task + one shared classifier.

Per image, the CLS token after the backbone's final norm; a masked mean over the images
of a volume; LayerNorm(768) -> Linear(768, 1). Task identity enters only through the
generated LoRA. In a training batch every volume may carry a different task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hyperct_core.backbone import BackboneConfig, create_backbone
from hyperct_core.errors import CheckpointError
from hyperct_core.hypernet import HyperNetConfig, HyperNetwork
from hyperct_core.lora import SegmentLoRA, check_supported, vit_cls

__all__ = ["HyperCTConfig", "HyperCT", "build_model", "flatten_batch"]


@dataclass(frozen=True)
class HyperCTConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    hypernet: HyperNetConfig = field(default_factory=HyperNetConfig)
    # s in y = Wx + b + s B(Ax); 1.0 in the reference (its alpha was never applied).
    lora_scale: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone.to_dict(),
            "hypernet": self.hypernet.to_dict(),
            "lora_scale": self.lora_scale,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HyperCTConfig:
        try:
            return cls(
                backbone=BackboneConfig.from_dict(data["backbone"]),
                hypernet=HyperNetConfig.from_dict(data["hypernet"]),
                lora_scale=float(data["lora_scale"]),
            )
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"incomplete model config: {exc}") from None


def flatten_batch(
    images: Tensor | list[Tensor], mask: Tensor | None = None
) -> tuple[Tensor, list[int]]:
    """Real images of a batch, volume after volume, and each volume's image count.

    Accepts a list of (n_i, 3, H, W) tensors or a padded (V, n_max, 3, H, W) tensor with
    a boolean (V, n_max) mask; padded images are dropped here and never reach the backbone.
    """
    if isinstance(images, (list, tuple)):
        if mask is not None:
            raise ValueError("a mask goes with a padded tensor, not a list")
        sizes = [int(v.shape[0]) for v in images]
        flat = torch.cat(list(images), dim=0) if images else torch.empty(0)
    else:
        if mask is None:
            raise ValueError("a padded batch needs its (V, n_max) mask")
        mask = mask.to(device=images.device, dtype=torch.bool)
        sizes = [int(n) for n in mask.sum(dim=1).tolist()]
        flat = images[mask]
    if not sizes or min(sizes) == 0:
        raise ValueError("every volume needs at least one image")
    if flat.dim() != 4 or flat.shape[1] != 3:
        raise ValueError(f"images must be (n, 3, H, W); got {tuple(flat.shape)}")
    return flat, sizes


def segment_mean(x: Tensor, sizes: list[int]) -> Tensor:
    """Mean of consecutive row blocks of ``x`` (one block per volume)."""
    index = torch.repeat_interleave(
        torch.arange(len(sizes), device=x.device), torch.tensor(sizes, device=x.device)
    )
    total = torch.zeros(len(sizes), *x.shape[1:], dtype=x.dtype, device=x.device)
    total.index_add_(0, index, x)
    return total / torch.tensor(sizes, dtype=x.dtype, device=x.device).unsqueeze(-1)


class HyperCT(nn.Module):
    """The HyperCT model; trainable: hypernetwork (with task embeddings) and classifier."""

    def __init__(self, config: HyperCTConfig, backbone: nn.Module) -> None:
        super().__init__()
        check_supported(backbone)
        self.config = config
        self.backbone = backbone
        self.backbone.requires_grad_(False)
        self.hypernet = HyperNetwork(config.hypernet, config.backbone)
        d = config.backbone.embed_dim
        self.classifier = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 1))

    def train(self, mode: bool = True) -> HyperCT:
        super().train(mode)
        self.backbone.eval()  # frozen: always in eval mode
        return self

    def generate_lora(self, tasks: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        return self.hypernet(tasks)

    def volume_features(
        self,
        images: Tensor | list[Tensor],
        tasks: Tensor,
        mask: Tensor | None = None,
    ) -> Tensor:
        """Masked mean of per-image CLS tokens under each volume's task LoRA: (V, D)."""
        flat, sizes = flatten_batch(images, mask)
        tasks = torch.as_tensor(tasks, device=flat.device).reshape(-1)
        if tasks.numel() != len(sizes):
            raise ValueError(f"{len(sizes)} volumes but {tasks.numel()} tasks")
        unique, groups = torch.unique(tasks, return_inverse=True)
        lora = SegmentLoRA(
            self.generate_lora(unique), sizes, groups.tolist(), self.config.lora_scale
        )
        cls = vit_cls(self.backbone, flat, lora)
        return segment_mean(cls, sizes)

    def forward(
        self,
        images: Tensor | list[Tensor],
        tasks: Tensor,
        mask: Tensor | None = None,
    ) -> Tensor:
        """Logits (V,) for each volume under its own task."""
        return self.classifier(self.volume_features(images, tasks, mask)).squeeze(-1)

    def parameter_counts(self) -> dict[str, int]:
        parts = self.hypernet.part_parameter_counts()
        counts = {
            "backbone": sum(p.numel() for p in self.backbone.parameters()),
            "hypernet_task_embedding": parts["task_embedding"],
            "hypernet_trunk": parts["trunk"],
            "hypernet_heads": parts["heads"],
            "hypernet_total": sum(parts.values()),
            "classifier": sum(p.numel() for p in self.classifier.parameters()),
        }
        counts["trainable"] = counts["hypernet_total"] + counts["classifier"]
        return counts


def build_model(
    config: HyperCTConfig | None = None,
    *,
    backbone_weights: str | Path | None = None,
    random_backbone: bool = False,
    seed: int | None = None,
) -> HyperCT:
    """Build a HyperCT model.

    The backbone loads from ``backbone_weights`` (timm, Hugging Face or Meta layout);
    ``random_backbone=True`` gives random backbone weights for tests and demos.
    ``seed`` makes the random initialisation reproducible.
    """
    config = config or HyperCTConfig()
    if seed is not None:
        torch.manual_seed(seed)
    backbone = create_backbone(config.backbone, backbone_weights, random_init=random_backbone)
    return HyperCT(config, backbone)
