"""HyperCT model and all-task inference against the spec's formula y = Wx + b + s B(Ax).

Tolerances (fp32, tiny model): probabilities agree to 1e-5 and CLS features to 1e-4
between the batched all-task path, single-task runs and the reference; bf16 probabilities
stay within 0.01 of fp32 (the spec's bar for using bf16).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hyperct_core.device import cpu_has_native_bf16
from hyperct_core.inference import Predictor
from hyperct_core.lora import lora_targets, vit_cls
from tests.core.tiny_models import studies, tiny_model

TASKS = 25
P_TOL = 1e-5


class _RefLinear(nn.Module):
    """A timm linear computing W x + b + s * B (A x), one (A, B) per output slice."""

    def __init__(self, lin: nn.Linear, pieces: list[tuple[torch.Tensor, torch.Tensor]], s: float):
        super().__init__()
        self.lin, self.pieces, self.s = lin, pieces, s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.lin.weight, self.lin.bias)
        deltas = [self.s * ((x @ a.T) @ b.T) for a, b in self.pieces]
        return y + torch.cat(deltas, dim=-1)


def reference_probs(model, images: list[torch.Tensor], task: int) -> np.ndarray:
    """Written from the spec, through timm's own forward with patched linears."""
    import copy

    bb = copy.deepcopy(model.backbone)
    lora = model.hypernet(torch.tensor([task]))
    s = model.config.lora_scale

    def ab(depth: int, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = lora[f"blocks.{depth}.{kind}"]
        return a[0], b[0]

    for i, blk in enumerate(bb.blocks):
        blk.attn.qkv = _RefLinear(blk.attn.qkv, [ab(i, "q"), ab(i, "k"), ab(i, "v")], s)
        blk.attn.proj = _RefLinear(blk.attn.proj, [ab(i, "proj")], s)
        blk.mlp.fc1 = _RefLinear(blk.mlp.fc1, [ab(i, "fc1")], s)
        blk.mlp.fc2 = _RefLinear(blk.mlp.fc2, [ab(i, "fc2")], s)
    out = []
    for vol in images:
        cls = bb.forward_features(vol)[:, 0]  # CLS after the final norm
        out.append(torch.sigmoid(model.classifier(cls.mean(0, keepdim=True))).item())
    return np.array(out)


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0, depth=2, scale=0.5)


@pytest.fixture(scope="module")
def batch():
    return studies([3, 1, 4], seed=1)


@pytest.fixture(scope="module")
def fp32_probs(model, batch):
    return Predictor(model, device="cpu", dtype="fp32", strategy="merge").predict(batch)


def test_frozen_pass_is_timms_backbone(model):
    x = studies([4])[0]
    with torch.no_grad():
        ours = vit_cls(model.backbone, x)
        timm_cls = model.backbone.forward_features(x)[:, 0]
    torch.testing.assert_close(ours, timm_cls, atol=1e-6, rtol=0)


def test_zero_b_gives_the_frozen_backbone(batch):
    m = tiny_model(seed=3)
    r = m.config.hypernet.rank
    with torch.no_grad():
        for kind, head in m.hypernet.heads.items():
            n_a = r * m.hypernet.dims[kind][0]
            head.weight[n_a:].zero_()
            head.bias[n_a:].zero_()
        lora = m.hypernet(torch.arange(TASKS))
        assert all(float(b.abs().max()) == 0.0 for _, b in lora.values())
        assert any(float(a.abs().max()) > 0.0 for a, _ in lora.values())
        frozen = torch.stack([m.backbone.forward_features(v)[:, 0].mean(0) for v in batch])
        for task in (0, 17):
            adapted = m.volume_features(batch, torch.full((len(batch),), task))
            torch.testing.assert_close(adapted, frozen, atol=1e-6, rtol=0)


def test_tasks_actually_differ(fp32_probs):
    # Guards the equality tests below against a model whose LoRA has no visible effect.
    assert fp32_probs.shape == (3, TASKS)
    assert fp32_probs.std(axis=1).min() > 1e-2


@pytest.mark.parametrize("task", [0, 9, 24])
def test_matches_reference_formula(model, batch, fp32_probs, task):
    with torch.no_grad():
        ref = reference_probs(model, batch, task)
        single = torch.sigmoid(model(batch, torch.full((len(batch),), task))).numpy()
    np.testing.assert_allclose(single, ref, atol=P_TOL, rtol=0)
    np.testing.assert_allclose(fp32_probs[:, task], ref, atol=P_TOL, rtol=0)


def test_all_task_strategies_equal_each_task_alone(model, batch, fp32_probs):
    lowrank = Predictor(model, device="cpu", dtype="fp32", strategy="lowrank").predict(batch)
    small_passes = Predictor(model, device="cpu", dtype="fp32", images_per_pass=2).predict(batch)
    with torch.no_grad():
        each = np.stack(
            [torch.sigmoid(model(batch, torch.full((3,), t))).numpy() for t in range(TASKS)], 1
        )
    for out in (fp32_probs, lowrank, small_passes):
        np.testing.assert_allclose(out, each, atol=P_TOL, rtol=0)


def test_one_batch_mixes_tasks(model, batch):
    tasks = torch.tensor([4, 20, 4])
    with torch.no_grad():
        mixed = model(batch, tasks)
        alone = torch.stack([model([v], t.view(1))[0] for v, t in zip(batch, tasks, strict=True)])
    torch.testing.assert_close(mixed, alone, atol=1e-5, rtol=0)


def test_padded_images_never_reach_the_backbone(model, batch):
    n_max = max(v.shape[0] for v in batch)
    padded = torch.full((len(batch), n_max, *batch[0].shape[1:]), float("nan"))
    mask = torch.zeros(len(batch), n_max, dtype=torch.bool)
    for i, v in enumerate(batch):
        padded[i, : len(v)] = v
        mask[i, : len(v)] = True
    for strategy in ("merge", "lowrank"):
        pred = Predictor(model, device="cpu", dtype="fp32", strategy=strategy)
        seen: list[int] = []

        def count(mod: nn.Module, inp: tuple[torch.Tensor], out: torch.Tensor, seen=seen) -> None:
            seen.append(inp[0].shape[0])

        hook = pred.model.backbone.patch_embed.register_forward_hook(count)
        out = pred.predict(padded, mask)
        hook.remove()
        # NaN padding would poison every output it touched; the patch embedding sees each
        # real image exactly once, for all tasks together.
        assert np.isfinite(out).all()
        assert sum(seen) == int(mask.sum())
        np.testing.assert_allclose(out, pred.predict(batch), atol=1e-6, rtol=0)
    with torch.no_grad():
        np.testing.assert_allclose(
            torch.sigmoid(model(padded, torch.tensor([1, 2, 3]), mask)).numpy(),
            torch.sigmoid(model(batch, torch.tensor([1, 2, 3]))).numpy(),
            atol=1e-6,
            rtol=0,
        )


def test_generated_lora_is_computed_once(model, batch):
    pred = Predictor(model, device="cpu", dtype="fp32")
    calls: list[int] = []
    pred.model.hypernet.register_forward_hook(lambda *a: calls.append(1))
    first = pred.predict(batch)
    second = pred.predict(batch)
    assert calls == []
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("strategy", ["merge", "lowrank"])
def test_bf16_within_001_of_fp32(model, batch, fp32_probs, strategy):
    bf16 = Predictor(model, device="cpu", dtype="bf16", strategy=strategy)
    assert next(bf16.model.backbone.parameters()).dtype == torch.bfloat16
    diff = np.abs(bf16.predict(batch) - fp32_probs).max()
    assert diff <= 0.01


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="CPU without native bf16")
def test_auto_dtype_takes_bf16_only_where_it_holds(model, batch, fp32_probs):
    # The tiny test models are narrow: lift the width floor to exercise the probe itself.
    fine = Predictor(model, device="cpu", dtype="auto", bf16_min_width=0)
    assert fine.dtype == torch.bfloat16 and fine.bf16_probe_diff <= 0.005
    assert np.abs(fine.predict(batch) - fp32_probs).max() <= 0.01
    touchy = tiny_model(seed=0)
    with torch.no_grad():
        # Logits steep (x30) and centred near 0 on random studies, where bf16 rounding shows.
        touchy.classifier[1].weight.mul_(30.0)
        feats = torch.stack(
            [touchy.volume_features(studies([2], seed=9), torch.tensor([t])) for t in range(25)]
        )
        touchy.classifier[1].bias.sub_(touchy.classifier(feats).mean())
    pred = Predictor(touchy, device="cpu", dtype="auto", bf16_min_width=0)
    assert pred.bf16_probe_diff > 0.005
    assert pred.dtype == torch.float32
    assert next(pred.model.backbone.parameters()).dtype == torch.float32
    exact = Predictor(touchy, device="cpu", dtype="fp32").predict(batch)
    np.testing.assert_allclose(pred.predict(batch), exact, atol=1e-6, rtol=0)


def test_training_step_reaches_only_trainable_parts(batch):
    m = tiny_model(seed=5).train()
    assert not m.backbone.training
    loss = F.binary_cross_entropy_with_logits(
        m(batch, torch.tensor([0, 7, 24])), torch.tensor([1.0, 0.0, 1.0])
    )
    loss.backward()
    assert all(p.grad is None for p in m.backbone.parameters())
    assert m.hypernet.heads["fc2"].weight.grad.abs().sum() > 0
    assert m.hypernet.task_embedding.grad[[0, 7, 24]].abs().sum() > 0
    assert m.hypernet.task_embedding.grad[1].abs().sum() == 0


def test_target_list_is_six_per_block(model):
    targets = lora_targets(model.config.backbone)
    assert len(targets) == 6 * model.config.backbone.depth
    assert [t.kind for t in targets[:6]] == ["q", "k", "v", "proj", "fc1", "fc2"]


def test_auto_dtype_keeps_fp32_for_a_narrow_model_on_cpu(model):
    assert Predictor(model, device="cpu", dtype="auto").dtype == torch.float32
