"""The full-size model (ViT-B/16 + spec hypernetwork), built once: sizes and shapes."""

from __future__ import annotations

import pytest
import torch

from hyperct_core.lora import lora_targets
from hyperct_core.model import HyperCTConfig, build_model

pytestmark = pytest.mark.slow


def linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def layer_norm(n: int) -> int:
    return 2 * n


@pytest.fixture(scope="module")
def full():
    return build_model(HyperCTConfig(), random_backbone=True, seed=0).eval()


def test_hypernetwork_parameter_count_follows_the_spec(full):
    h, b = full.config.hypernet, full.config.backbone
    d, mlp, r, head_in = b.embed_dim, b.mlp_hidden, h.rank, h.head_input_size
    assert (d, mlp, r, head_in, b.depth) == (768, 3072, 16, 768, 12)
    latent, hidden = 64 + 32 + 32, 512
    head_outputs = 4 * r * (d + d) + 2 * r * (d + mlp)  # q, k, v, proj; fc1, fc2
    heads = head_outputs * (head_in + 1)
    trunk = (
        linear(512, 64) + layer_norm(64)  # task projection
        + 12 * 32 + layer_norm(32) + 6 * 32 + layer_norm(32)  # depth, type embeddings
        + linear(latent, hidden) + linear(hidden, latent)  # mixer
        + 2 * (layer_norm(latent) + linear(latent, hidden) + linear(hidden, latent))
        + layer_norm(latent) + linear(latent, hidden) + linear(hidden, head_in)  # out proj
    )  # fmt: skip
    counts = full.parameter_counts()
    print(f"\nhypernetwork parameters: {counts}")
    assert counts["hypernet_heads"] == heads
    assert counts["hypernet_trunk"] == trunk
    assert counts["hypernet_task_embedding"] == 25 * 512
    assert counts["classifier"] == layer_norm(768) + linear(768, 1)
    # The spec's "about 171 M: heads about 170.1 M, trunk about 0.9 M" (not the paper's 85 M).
    assert round(heads / 1e6, 1) == 170.1
    assert round((trunk + 25 * 512) / 1e6, 1) == 0.9
    assert round(counts["hypernet_total"] / 1e6) == 171
    backbone_expected = sum(p.numel() for p in full.backbone.parameters())
    assert 85e6 < backbone_expected < 87e6 and counts["backbone"] == backbone_expected
    assert not any(p.requires_grad for p in full.backbone.parameters())


def test_generated_shapes_for_all_72_targets(full):
    targets = lora_targets(full.config.backbone)
    assert len(targets) == 72
    with torch.inference_mode():
        lora = full.generate_lora(torch.arange(25))
    assert set(lora) == {t.name for t in targets}
    for t in targets:
        a, b = lora[t.name]
        assert a.shape == (25, 16, t.d_in), t.name
        assert b.shape == (25, t.d_out, 16), t.name
    assert lora["blocks.11.fc1"][0].shape == (25, 16, 768)
    assert lora["blocks.0.fc2"][0].shape == (25, 16, 3072)
    # Tasks get different adapters; B starts small (B-part bias zero, weights N(0, 0.01)).
    a, b = lora["blocks.5.q"]
    assert not torch.allclose(a[0], a[1])
    assert b.abs().max() < a.abs().max()
