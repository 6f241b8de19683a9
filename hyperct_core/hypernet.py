"""The hypernetwork that generates LoRA A and B for every target, per task.

Layout (HyperCT spec, "Hypernetwork"):

* task embedding 25 x 512, N(0, 0.02) -> Linear(512, 64) -> LayerNorm(64)
* depth embedding Embedding(depth, 32) -> LayerNorm(32); module type Embedding(6, 32)
  -> LayerNorm(32); concatenated: a 128-wide latent
* mixer, two pre-norm residual blocks, output projection to ``head_input_size``
* one head per module type, shared across depths: Linear(head_input_size,
  r * (d_in + d_out)); the first r * d_in outputs are A viewed (r, d_in), the rest B
  viewed (d_out, r). Head weights N(0, 0.01); A-part of the bias N(0, 0.01), B-part 0
  (so B starts small but, through the head weights, not exactly zero).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, cast

import torch
from torch import Tensor, nn

from hyperct_core.backbone import BackboneConfig
from hyperct_core.errors import CheckpointError
from hyperct_core.lora import TARGET_TYPES, target_dims, target_name

__all__ = ["HyperNetConfig", "HyperNetwork"]


@dataclass(frozen=True)
class HyperNetConfig:
    num_tasks: int = 25
    task_emb_dim: int = 512
    task_proj_dim: int = 64
    depth_emb_dim: int = 32
    type_emb_dim: int = 32
    hidden_dim: int = 512
    num_res_blocks: int = 2
    # Width feeding the heads: 768 in the code that was run, 512 in the paper's appendix.
    head_input_size: int = 768
    rank: int = 16
    dropout: float = 0.05

    @property
    def latent_dim(self) -> int:
        return self.task_proj_dim + self.depth_emb_dim + self.type_emb_dim

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HyperNetConfig:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise CheckpointError(f"unknown hypernetwork config fields: {sorted(unknown)}")
        return cls(**data)


class _Residual(nn.Module):
    def __init__(self, dim: int, hidden: int, p: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, hidden),
            nn.SiLU(),
            nn.Dropout(p),
            nn.Linear(hidden, dim),
            nn.SiLU(),
            nn.Dropout(p),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class HyperNetwork(nn.Module):
    """Maps (task, depth, module type) to that target's LoRA A and B."""

    def __init__(self, config: HyperNetConfig, backbone: BackboneConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.depth = backbone.depth
        self.dims = target_dims(backbone)
        p = c.dropout
        self.task_embedding = nn.Parameter(torch.empty(c.num_tasks, c.task_emb_dim))
        self.task_proj = nn.Sequential(
            nn.Linear(c.task_emb_dim, c.task_proj_dim), nn.LayerNorm(c.task_proj_dim)
        )
        self.depth_embedding = nn.Embedding(backbone.depth, c.depth_emb_dim)
        self.depth_norm = nn.LayerNorm(c.depth_emb_dim)
        self.type_embedding = nn.Embedding(len(TARGET_TYPES), c.type_emb_dim)
        self.type_norm = nn.LayerNorm(c.type_emb_dim)
        d, h = c.latent_dim, c.hidden_dim
        self.mixer = nn.Sequential(
            nn.Dropout(p), nn.Linear(d, h), nn.SiLU(), nn.Dropout(p), nn.Linear(h, d), nn.SiLU(),
            nn.Dropout(p),
        )  # fmt: skip
        self.blocks = nn.Sequential(*(_Residual(d, h, p) for _ in range(c.num_res_blocks)))
        self.out_proj = nn.Sequential(
            nn.LayerNorm(d), nn.Linear(d, h), nn.SiLU(), nn.Dropout(p),
            nn.Linear(h, c.head_input_size), nn.SiLU(),
        )  # fmt: skip
        self.heads = nn.ModuleDict(
            {
                kind: nn.Linear(c.head_input_size, c.rank * (d_in + d_out))
                for kind, (d_in, d_out) in self.dims.items()
            }
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.task_embedding, std=0.02)
        for kind, module in self.heads.items():
            head = cast(nn.Linear, module)
            n_a = self.config.rank * self.dims[kind][0]
            nn.init.normal_(head.weight, std=0.01)
            with torch.no_grad():
                nn.init.normal_(head.bias[:n_a], std=0.01)
                head.bias[n_a:].zero_()

    def part_parameter_counts(self) -> dict[str, int]:
        """Parameter count of each part: task embedding, trunk, heads."""
        count = {"task_embedding": self.task_embedding.numel(), "trunk": 0, "heads": 0}
        for name, p in self.named_parameters():
            if name.startswith("heads."):
                count["heads"] += p.numel()
            elif name != "task_embedding":
                count["trunk"] += p.numel()
        return count

    def forward(self, tasks: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        """LoRA for the given task indices: target name -> (A (G, r, d_in), B (G, d_out, r))."""
        g, n_depth, n_type = tasks.numel(), self.depth, len(TARGET_TYPES)
        dev = self.task_embedding.device
        task = self.task_proj(self.task_embedding[tasks])  # (G, 64)
        depth = self.depth_norm(self.depth_embedding(torch.arange(n_depth, device=dev)))
        kind = self.type_norm(self.type_embedding(torch.arange(n_type, device=dev)))
        latent = torch.cat(
            [
                task[:, None, None].expand(g, n_depth, n_type, -1),
                depth[None, :, None].expand(g, n_depth, n_type, -1),
                kind[None, None, :].expand(g, n_depth, n_type, -1),
            ],
            dim=-1,
        )
        feats = self.out_proj(self.blocks(self.mixer(latent)))  # (G, depth, type, head_in)
        out: dict[str, tuple[Tensor, Tensor]] = {}
        r = self.config.rank
        for t, kind_name in enumerate(TARGET_TYPES):
            d_in, d_out = self.dims[kind_name]
            flat = self.heads[kind_name](feats[:, :, t])  # (G, depth, r*(d_in+d_out))
            a = flat[..., : r * d_in].reshape(g, n_depth, r, d_in)
            b = flat[..., r * d_in :].reshape(g, n_depth, d_out, r)
            for i in range(n_depth):
                out[target_name(i, kind_name)] = (a[:, i], b[:, i])
        return out
