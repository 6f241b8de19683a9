"""Device selection, activation checkpointing and the training data loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hyperct_core.device import DeviceError, resolve_device
from hyperct_core.train_step import checkpointed_cls, forward_logits
from tests.core.tiny_models import studies, tiny_model

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_auto_and_cpu_resolve_here() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(" CPU ") == torch.device("cpu")


@pytest.mark.parametrize("bad", ["tpu", "cuda:x", "gpu", "", "mps", "cuda:-1"])
def test_unknown_devices_are_refused_in_one_line(bad: str) -> None:
    with pytest.raises(DeviceError, match="unknown device") as info:
        resolve_device(bad)
    assert "\n" not in str(info.value)


def test_a_gpu_that_is_not_there_is_refused() -> None:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(DeviceError, match=f"cuda:{count + 6}"):
        resolve_device(f"cuda:{count + 6}")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA|no GPU"):
            resolve_device("cuda")


def test_train_cli_refuses_a_bad_device_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from agent.cli import main

    manifest = tmp_path / "m.csv"
    manifest.write_text("path,patient_id,split,cardiomegaly\n")
    for device in ("tpu", "cuda:7"):
        code = main(
            ["model", "train", str(manifest), "--out", str(tmp_path / "r"), "--random-backbone",
             "--device", device, "--no-progress"]
        )  # fmt: skip
        err = capsys.readouterr().err.strip()
        assert code == 1 and "\n" not in err and "device" in err, err


def test_serve_auto_dtype_keeps_fp32_without_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """oneDNN emulates bf16 on plain AVX512, slower than fp32: auto must not pick it."""
    import hyperct_core.device as device_mod
    from hyperct_core.inference import Predictor, resolve_dtype

    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: False)
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    pred = Predictor(tiny_model(), device="cpu", dtype="auto", bf16_min_width=0)
    assert pred.dtype == torch.float32 and pred.bf16_probe_diff is None
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: True)
    assert resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_checkpointing_gives_the_same_loss_and_gradients() -> None:
    model = tiny_model(seed=3).train()
    images = studies([3, 5, 2], seed=4)
    tasks = torch.tensor([7, 19, 7])
    y = torch.tensor([1.0, 0.0, 1.0])
    results = []
    for checkpointing in (False, True):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # the hypernetwork's dropout draws the same masks
        logits = forward_logits(model, images, tasks, checkpointing=checkpointing)
        loss = F.binary_cross_entropy_with_logits(logits, y)
        loss.backward()
        results.append((loss.detach(), _grads(model)))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    assert set(grads_a) == set(grads_b) and any(n.startswith("hypernet.") for n in grads_a)
    for name, g in grads_a.items():
        assert g.abs().sum() > 0, name
        assert torch.allclose(g, grads_b[name], rtol=1e-4, atol=1e-7), name


def test_checkpointed_backbone_pretraining_gradients_match() -> None:
    """The demo's backbone phase trains the backbone itself through the checkpoints."""
    from hyperct_core.lora import vit_cls

    model = tiny_model(seed=5)
    backbone = model.backbone.requires_grad_(True)
    flat = torch.cat(studies([4, 2], seed=6))
    grads = []
    for fn in (vit_cls, checkpointed_cls):
        backbone.zero_grad(set_to_none=True)
        fn(backbone, flat).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in backbone.named_parameters()})
    for name, g in grads[0].items():
        assert torch.allclose(g, grads[1][name], rtol=1e-4, atol=1e-7), name


def test_loader_images_do_not_depend_on_worker_count(tmp_path: Path) -> None:
    from hyperct_core.dataset import (
        CachedImages,
        PreprocessCache,
        StepPlan,
        image_loader,
        read_manifest,
    )
    from hyperct_core.phantoms import write_phantom_dataset
    from hyperct_core.preprocess import PreprocessConfig
    from hyperct_core.train_step import plan_epoch as _plan_epoch

    manifest = write_phantom_dataset(
        tmp_path / "d", 5, seed=2, shape=(24, 48, 48), spacing=(12.0, 7.0, 7.0),
        tasks=["cardiomegaly"],
    )  # fmt: skip
    rows = list(read_manifest(manifest).rows)
    cache = PreprocessCache(tmp_path / "cache", PreprocessConfig(volume_size=30, crop_size=24))
    runs = []
    for workers in (0, 1):
        plan = StepPlan()
        loader = image_loader(CachedImages(rows, cache, True), plan, workers=workers,
                              pin_memory=False)  # fmt: skip
        steps = _plan_epoch(plan, len(rows), 2, np.random.default_rng(0))
        runs.append((steps, [torch.cat(batch) for batch in loader]))
    (steps_a, imgs_a), (steps_b, imgs_b) = runs
    assert steps_a == steps_b and [len(s) for s in steps_a] == [2, 2, 1]
    assert len(imgs_a) == 3
    for a, b in zip(imgs_a, imgs_b, strict=True):
        assert torch.equal(a, b)


@cuda
def test_training_runs_on_the_gpu(tmp_path: Path) -> None:
    """Model, optimizer state and batches on CUDA; bf16 autocast; checkpointing on."""
    import dataclasses

    from hyperct_core.phantoms import write_phantom_dataset
    from hyperct_core.train import demo_setup, train

    manifest = write_phantom_dataset(
        tmp_path / "d", 16, seed=5, shape=(24, 48, 48), spacing=(12.0, 7.0, 7.0),
        splits=(("train", 0.5), ("val", 0.5)), prevalence=0.5,
        tasks=["cardiomegaly", "pleural_effusion"],
    )  # fmt: skip
    model_config, preprocess, recipe = demo_setup()
    recipe = dataclasses.replace(recipe, epochs=1, backbone_epochs=1, batch_size=4)
    result = train(
        manifest, tmp_path / "run", config=recipe, model_config=model_config,
        preprocess=preprocess, random_backbone=True, device="cuda",
    )  # fmt: skip
    state = torch.load(tmp_path / "run" / "last" / "train_state.pt", weights_only=False)
    moments = [t for s in state["optimizer"]["state"].values() for t in s.values()
               if isinstance(t, torch.Tensor) and t.dim() > 0]  # fmt: skip
    assert moments and all(t.device.type == "cuda" for t in moments)
    from hyperct_core.checkpoint import load_checkpoint

    _, card = load_checkpoint(result.best)
    training = card.extra["training"]
    assert training["device"] == "cuda" and training["precision"] == "bf16 autocast"
    assert training["activation_checkpointing"] is True


@cuda
def test_gpu_inference_matches_the_cpu() -> None:
    """The CUDA strategies (lowrank, merge; fp32 and bf16) against the CPU's fp32 merge."""
    from hyperct_core.inference import Predictor

    model = tiny_model(seed=7)
    batch = studies([4, 7, 1], seed=8)
    ref = Predictor(model, device="cpu", dtype="fp32", strategy="merge").predict(batch)
    for strategy in ("lowrank", "merge"):
        fp32 = Predictor(model, device="cuda", dtype="fp32", strategy=strategy).predict(batch)
        assert np.abs(fp32 - ref).max() < 1e-4, strategy
        bf16 = Predictor(model, device="cuda", dtype="bf16", strategy=strategy).predict(batch)
        assert np.abs(bf16 - ref).max() < 0.01, strategy
    auto = Predictor(model, device="auto", dtype="auto")
    assert auto.device.type == "cuda" and auto.strategy == "lowrank"
