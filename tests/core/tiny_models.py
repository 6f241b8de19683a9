"""Small HyperCT models for the model tests: the ViT-B structure at toy width."""

from __future__ import annotations

import torch

from hyperct_core.backbone import BackboneConfig
from hyperct_core.hypernet import HyperNetConfig
from hyperct_core.model import HyperCT, HyperCTConfig, build_model

IMG = 48  # 3 x 3 patches + 5 prefix tokens


def tiny_config(depth: int = 2, scale: float = 0.5, qkv_bias: bool = False) -> HyperCTConfig:
    backbone = BackboneConfig(
        embed_dim=64, depth=depth, num_heads=2, img_size=IMG, qkv_bias=qkv_bias
    )
    return HyperCTConfig(backbone, HyperNetConfig(head_input_size=128), lora_scale=scale)


def tiny_model(seed: int = 0, **kwargs: object) -> HyperCT:
    """Eval-mode tiny model whose LoRA and blocks matter for the output.

    timm's LayerScale init (1e-5) and the spec's small head init would make every block
    and every task nearly invisible, so equality tests could pass vacuously: LayerScale is
    set to 1 and the heads are drawn wider.
    """
    model = build_model(tiny_config(**kwargs), random_backbone=True, seed=seed).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for blk in model.backbone.blocks:
            blk.gamma_1.fill_(1.0)
            blk.gamma_2.fill_(1.0)
        for head in model.hypernet.heads.values():
            head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 0.05)
            head.bias.copy_(torch.randn(head.bias.shape, generator=g) * 0.1)
        for p in model.classifier.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if p.dim() == 1 else 0.0))
    return model


def studies(sizes: list[int], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, IMG, IMG, generator=g) for n in sizes]
