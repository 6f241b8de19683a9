"""Training: the recipe's pieces, checkpoints with their cards, exact resume."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hyperct_core.checkpoint import load_checkpoint
from hyperct_core.dataset import ManifestRow, read_manifest
from hyperct_core.phantoms import write_phantom_dataset
from hyperct_core.tasks import TASK_NAMES
from hyperct_core.train import (
    TrainConfig,
    TrainError,
    _lr_lambda,
    demo_setup,
    sample_tasks,
    train,
)

SHAPE = (24, 48, 48)
SPACING = (12.0, 7.0, 7.0)


def _row(labelled: dict[int, float]) -> ManifestRow:
    labels = np.full(len(TASK_NAMES), np.nan, dtype=np.float32)
    for i, v in labelled.items():
        labels[i] = v
    return ManifestRow(Path("x.npy"), "P", "train", labels, line=7)


def test_each_volume_draws_uniformly_among_its_labelled_tasks() -> None:
    rows = [_row({3: 1.0, 9: 0.0, 19: 1.0}), _row({22: 0.0})]
    rng = np.random.default_rng(0)
    draws = np.array([sample_tasks(rows, rng) for _ in range(3000)])
    assert set(draws[:, 1]) == {22}
    counts = np.array([(draws[:, 0] == t).sum() for t in (3, 9, 19)])
    assert set(draws[:, 0]) == {3, 9, 19}
    assert np.abs(counts / 3000 - 1 / 3).max() < 0.03
    with pytest.raises(TrainError, match="manifest line 7"):
        sample_tasks([_row({})], rng)


def test_schedules() -> None:
    cos = _lr_lambda(TrainConfig(epochs=4, schedule="cosine"), steps_per_epoch=10)
    assert cos(0) == 1.0 and cos(20) == pytest.approx(0.5) and cos(40) == pytest.approx(0.0)
    step = _lr_lambda(TrainConfig(epochs=40, schedule="step", step_size=15), steps_per_epoch=10)
    assert step(149) == 1.0 and step(150) == pytest.approx(0.1) and step(300) == pytest.approx(0.01)
    spec = TrainConfig()
    assert (spec.lr, spec.betas, spec.eps, spec.weight_decay, spec.batch_size, spec.epochs) == (
        1e-5,
        (0.9, 0.95),
        1e-8,
        0.0,
        8,
        20,
    )
    with pytest.raises(TrainError, match="schedule must be one of"):
        TrainConfig(schedule="linear")


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("train_data")
    return write_phantom_dataset(
        folder, 16, seed=5, fmt="npz", shape=SHAPE, spacing=SPACING,
        splits=(("train", 0.5), ("val", 0.5)), prevalence=0.5,
        tasks=["cardiomegaly", "pleural_effusion"],
    )  # fmt: skip


def _setup(**changes: Any) -> tuple[Any, Any, TrainConfig]:
    model_config, preprocess, recipe = demo_setup()
    return model_config, preprocess, dataclasses.replace(recipe, batch_size=4, **changes)


def test_training_writes_checkpoints_with_their_cards(small_data: Path, tmp_path: Path) -> None:
    model_config, preprocess, recipe = _setup(epochs=1, backbone_epochs=1)
    result = train(
        small_data, tmp_path / "run", config=recipe, model_config=model_config,
        preprocess=preprocess, random_backbone=True, demo=True,
    )  # fmt: skip
    assert [h["phase"] for h in result.history] == ["backbone", "hyper"]
    model, card = load_checkpoint(result.best)
    assert card.validated is False and card.extra["demo"] is True
    assert "pre-trained on the train split" in card.extra["training"]["backbone_training"]
    assert card.training_data == read_manifest(small_data).summary()
    assert card.preprocess_config() == preprocess
    assert card.extra["training"]["recipe"]["backbone_epochs"] == 1
    assert (tmp_path / "run" / "last" / "train_state.pt").is_file()
    assert not any(p.requires_grad for p in model.backbone.parameters())


def test_resume_continues_exactly(small_data: Path, tmp_path: Path) -> None:
    model_config, preprocess, recipe = _setup(epochs=2, backbone_epochs=0, schedule="constant")
    kwargs = {"model_config": model_config, "preprocess": preprocess, "random_backbone": True}
    straight = train(small_data, tmp_path / "a", config=recipe, **kwargs)
    train(small_data, tmp_path / "b", config=dataclasses.replace(recipe, epochs=1), **kwargs)
    resumed = train(small_data, tmp_path / "b", config=recipe, resume=True)
    assert len(resumed.history) == 2
    assert resumed.history[1]["loss"] == pytest.approx(straight.history[1]["loss"], rel=1e-5)
    a, _ = load_checkpoint(straight.last)
    b, _ = load_checkpoint(resumed.last)
    for (name, pa), (_, pb) in zip(
        a.hypernet.state_dict().items(), b.hypernet.state_dict().items(), strict=True
    ):
        assert torch.allclose(pa, pb, atol=1e-6), name


def test_train_cli_needs_a_backbone(
    small_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from agent.cli import main

    assert main(["model", "train", str(small_data), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip()
    assert "no backbone" in err and "\n" not in err


@pytest.mark.slow  # two short trainings: ~15-35 s on 2 cores
def test_cpu_training_with_checkpointing_matches_and_is_recorded(
    small_data: Path, tmp_path: Path
) -> None:
    """Same losses and weights with activation checkpointing; the card says how it ran."""
    model_config, preprocess, recipe = _setup(epochs=1, backbone_epochs=1, schedule="constant")
    kwargs = {"model_config": model_config, "preprocess": preprocess, "random_backbone": True}
    plain = train(small_data, tmp_path / "a", config=recipe, device="cpu", **kwargs)
    ckpt = train(
        small_data, tmp_path / "b", config=recipe, device="cpu", checkpointing=True, **kwargs
    )
    for a, b in zip(plain.history, ckpt.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    ma, card = load_checkpoint(plain.last)
    mb, card_b = load_checkpoint(ckpt.last)
    for (name, pa), pb in zip(ma.state_dict().items(), mb.state_dict().values(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-5), name
    training = card.extra["training"]
    assert (training["device"], training["precision"]) == ("cpu", "fp32")
    assert training["activation_checkpointing"] is False
    assert card_b.extra["training"]["activation_checkpointing"] is True
    # A trained model has no operating point until `model evaluate` gives it one.
    assert card.thresholds == {}
    state = torch.load(tmp_path / "a" / "last" / "train_state.pt", weights_only=False)
    moments = [t for s in state["optimizer"]["state"].values() for t in s.values()]
    assert moments and all(t.device.type == "cpu" for t in moments)
    with pytest.raises(TrainError, match="bf16 autocast is for CUDA"):
        train(small_data, tmp_path / "c", config=recipe, device="cpu", precision="bf16", **kwargs)
