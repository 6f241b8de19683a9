"""Training HyperCT on a site's labelled series (``hyperct-agent model train MANIFEST``).

Recipe (HyperCT spec, "Training"), every constant a :class:`TrainConfig` field:

* each step, each volume of the batch gets one task drawn uniformly from its labelled
  tasks (volumes with no label are left out); BCE with logits on that task only, so
  missing labels never enter the loss (masked BCE);
* AdamW, lr 1e-5, betas (0.9, 0.95), eps 1e-8, weight decay 0; batch 8; fp32 weights
  and optimizer state (on CUDA the forward pass runs under bf16 autocast);
* cosine schedule over the epochs (``schedule="cosine"``, the reference code) or step
  decay x0.1 every 15 epochs (``schedule="step"``, the paper text);
* augmentation: random in-plane crop and a random flip (p = 0.5), see
  :func:`hyperct_core.preprocess.images_from_volume` in training mode;
* trainable: hypernetwork (with its task embeddings) and classifier; the backbone is
  frozen and in eval mode;
* after every epoch the model is scored on the ``val`` split (mean ROC AUC over the
  tasks that have both classes there); the best epoch is kept.

Device (``device``: ``auto``, ``cpu``, ``cuda``, ``cuda:N``;
:func:`hyperct_core.device.resolve_device`). Model, batches and optimizer state live
there. ``checkpointing`` (default: on for CUDA, off on the CPU) recomputes each backbone
block in the backward pass instead of keeping its activations
(:func:`checkpointed_cls`): the LoRA makes every block's activations part of the
gradient path, about 1 GB per ViT-B/16 volume of 55 images in bf16, so the spec's batch
of 8 fits one GPU at the price of one more forward pass. On the CPU, memory rarely binds
before time does, so it stays off unless asked. Images come from the preprocessing cache
through a DataLoader (``workers`` processes, pinned memory on CUDA); each volume's
augmentation is drawn from its own seed, so results do not depend on the worker count.

Backbone. For real use the operator supplies a DINOv3 ViT-B/16 weight file (the card
references it by SHA-256). A randomly initialised frozen ViT carries no useful features,
so the project's small demo models use a documented deviation, ``backbone_epochs`` > 0:
first the small backbone is pre-trained on the training split with a temporary linear
multi-label head (masked BCE over all labelled tasks, backbone unfrozen), then it is
frozen and the recipe above runs unchanged. The card records it; it is not the paper's
setting.

Outputs in the run folder::

    best/           checkpoint (model.safetensors + card.json) of the best epoch
    last/           checkpoint of the last epoch plus train_state.pt (for --resume)
    history.json    per-epoch loss, learning rate, validation AUC per task

Reference results of the full-scale model (spec, not a claim about anything trained here):
mean AUC 78.1 on the CU retrospective test set (conventional 78.5, opportunistic 77.0);
prospective 77.8 (CU) and 78.6 (WCM).
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hyperct_core.backbone import BackboneConfig
from hyperct_core.checkpoint import load_checkpoint, make_card, save_checkpoint
from hyperct_core.dataset import (
    CachedImages,
    Manifest,
    ManifestRow,
    PreprocessCache,
    StepPlan,
    image_loader,
    read_manifest,
)
from hyperct_core.device import resolve_device
from hyperct_core.errors import HyperCTError
from hyperct_core.hypernet import HyperNetConfig
from hyperct_core.lora import vit_cls
from hyperct_core.model import HyperCTConfig, build_model, segment_mean
from hyperct_core.preprocess import PreprocessConfig
from hyperct_core.tasks import TASK_NAMES
from hyperct_core.train_step import (
    Progress,
    auc_report,
    autocast,
    checkpointed_cls,
    default_workers,
    forward_logits,
    plan_epoch,
    val_scores,
)

__all__ = [
    "SCHEDULES",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "checkpointed_cls",
    "demo_setup",
    "forward_logits",
    "sample_tasks",
    "train",
]

SCHEDULES = ("cosine", "step", "constant")
STATE_NAME = "train_state.pt"


class TrainError(HyperCTError):
    """Training cannot start or continue; the message says why."""


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters; defaults are the spec's recipe."""

    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.0
    schedule: str = "cosine"
    step_size: int = 15  # epochs between decays of the step schedule
    step_gamma: float = 0.1
    augment: bool = True
    seed: int = 0
    # Demo deviation: pre-train a small backbone with a multi-label head first.
    backbone_epochs: int = 0
    backbone_lr: float = 1e-3
    eval_batch: int = 16

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise TrainError(
                f"schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}"
            )
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.backbone_epochs < 0:
            raise TrainError("epochs and batch size must be >= 1, lr > 0, backbone_epochs >= 0")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        if "betas" in data:
            data["betas"] = tuple(data["betas"])
        return cls(**data)


@dataclass
class TrainResult:
    best: Path
    last: Path
    best_epoch: int
    best_auc: float
    history: list[dict[str, Any]] = field(default_factory=list)


def demo_setup() -> tuple[HyperCTConfig, PreprocessConfig, TrainConfig]:
    """Model, preprocessing and recipe of the project's small demo models.

    A 2-block, 64-wide ViT with the ViT-B structure (patch 4 on 24 x 24 images: a 6 x 6
    token grid), input cube 30^3 cropped to 24 (about the spec's 164 -> 144 ratio; about
    12 mm per pixel on a chest), a narrow hypernetwork (hidden 128, head input 32), and the backbone
    pre-trained on the phantoms first (``backbone_epochs``). At this resolution the
    phantoms' large findings (heart size, pleural and pericardial fluid, consolidation)
    are learnt within minutes on 2 CPU cores; small ones (calcified plaques, nodules,
    a pacemaker) are not. The hypernetwork learning rate is 1e-4: the spec's 1e-5 is
    tuned for a full-size hypernetwork (85.0 M parameters in the paper; this code's
    ViT-B/16 configuration counts more, see ``model info``) over a pre-trained ViT-B,
    and 1e-3 makes the
    generated LoRA change so fast per step that nothing is learnt.
    """
    backbone = BackboneConfig(
        embed_dim=64, depth=2, num_heads=2, patch_size=4, img_size=24, num_reg_tokens=4
    )
    # A narrow hypernetwork (the spec's structure at 128 hidden / 32 head input) keeps
    # the committed demo checkpoint at a few MB.
    hypernet = HyperNetConfig(hidden_dim=128, head_input_size=32)
    model = HyperCTConfig(backbone, hypernet, lora_scale=1.0)
    preprocess = PreprocessConfig(volume_size=30, crop_size=24)
    recipe = TrainConfig(epochs=20, lr=1e-4, backbone_epochs=40, backbone_lr=2e-3)
    return model, preprocess, recipe


# --------------------------------------------------------------------------- helpers


def sample_tasks(rows: Sequence[ManifestRow], rng: np.random.Generator) -> list[int]:
    """One task per volume, uniform over that volume's labelled tasks (spec recipe)."""
    out = []
    for r in rows:
        labelled = r.labelled_tasks
        if len(labelled) == 0:
            raise TrainError(f"manifest line {r.line}: a series without labels cannot train")
        out.append(int(labelled[rng.integers(len(labelled))]))
    return out


def _labelled(rows: Sequence[ManifestRow]) -> list[ManifestRow]:
    return [r for r in rows if len(r.labelled_tasks)]


def _val_tasks(rows: Sequence[ManifestRow]) -> list[int]:
    """Tasks with both classes in ``rows`` (the others have no AUC)."""
    if not rows:
        return []
    y = np.stack([r.labels for r in rows])
    return [i for i in range(y.shape[1]) if (y[:, i] == 1).any() and (y[:, i] == 0).any()]


def _lr_lambda(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    total = max(config.epochs * steps_per_epoch, 1)

    def factor(step: int) -> float:
        if config.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
        if config.schedule == "step":
            return config.step_gamma ** ((step // max(steps_per_epoch, 1)) // config.step_size)
        return 1.0

    return factor


# --------------------------------------------------------------------------- main entry


def train(
    manifest: str | Path | Manifest,
    out: str | Path,
    *,
    config: TrainConfig | None = None,
    model_config: HyperCTConfig | None = None,
    preprocess: PreprocessConfig | None = None,
    backbone_weights: str | Path | None = None,
    random_backbone: bool = False,
    init_checkpoint: str | Path | None = None,
    resume: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    name: str = "hyperct",
    version: str = "0.1.0",
    description: str = "",
    demo: bool = False,
    log: Callable[[str], None] | None = None,
    device: str | torch.device = "auto",
    checkpointing: bool | None = None,
    precision: str = "auto",
    workers: int | None = None,
) -> TrainResult:
    """Train on the manifest's ``train`` split, select on ``val``; write ``out/best``.

    Args:
        manifest: Manifest path (or a read :class:`Manifest`).
        out: Run folder (``best/``, ``last/``, ``history.json``).
        config: Recipe; the spec's defaults if omitted.
        model_config: Architecture; ViT-B/16 + spec hypernetwork if omitted.
        preprocess: Input constants; the spec's defaults if omitted.
        backbone_weights: Operator-supplied DINOv3 weight file (referenced by the card).
        random_backbone: Random backbone weights (tests and demo models only).
        init_checkpoint: Start from this checkpoint's weights (fine-tuning); its card's
            architecture and preprocessing are used.
        resume: Continue the run in ``out`` from ``out/last`` (optimizer, schedule, RNG).
        cache_dir: Preprocessing cache; default ``<manifest folder>/.hyperct-cache``.
        progress: Show a progress bar (tqdm) with loss and validation AUC.
        demo: Mark the card as a demo model (it is never marked validated here).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (one line if it is not here).
        checkpointing: Activation checkpointing through the backbone; None: on CUDA only.
        precision: ``auto`` (bf16 autocast on CUDA, fp32 on the CPU), ``fp32`` or ``bf16``.
        workers: DataLoader processes; None: 0 on the CPU, up to 8 for a GPU.
    """
    config_given = config is not None
    config = config or TrainConfig()
    dev = resolve_device(device)
    if precision not in ("auto", "fp32", "bf16"):
        raise TrainError(f"precision must be auto, fp32 or bf16, not {precision!r}")
    if precision == "bf16" and dev.type != "cuda":
        raise TrainError("bf16 autocast is for CUDA devices; train on the CPU in fp32")
    amp = dev.type == "cuda" and precision in ("auto", "bf16")
    if checkpointing is None:
        checkpointing = dev.type == "cuda"
    workers = default_workers(dev) if workers is None else int(workers)
    if workers < 0:
        raise TrainError("workers must be >= 0")
    say = log or (lambda _msg: None)
    out = Path(out)
    if not isinstance(manifest, Manifest):
        manifest = read_manifest(manifest)
    train_rows = _labelled(manifest.split("train"))
    val_rows = _labelled(manifest.split("val"))
    if not train_rows:
        raise TrainError(f"{manifest.path.name}: no labelled series in the train split")
    val_tasks = _val_tasks(val_rows)
    if val_rows and not val_tasks:
        raise TrainError("the val split has no task with both a positive and a negative label")

    state: dict[str, Any] | None = None
    backbone_file: Path | None = None
    if resume:
        state_path = out / "last" / STATE_NAME
        if not state_path.is_file():
            raise TrainError(f"nothing to resume: {state_path} not found")
        model, card0 = load_checkpoint(out / "last")
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        saved = TrainConfig.from_dict(state["config"])
        # A resumed run keeps its recipe; only the number of epochs may grow.
        config = dataclasses.replace(saved, epochs=config.epochs) if config_given else saved
        preprocess = card0.preprocess_config()
        if card0.backbone.get("weights") == "external":
            backbone_file = Path(card0.backbone["file"])
    elif init_checkpoint is not None:
        model, card0 = load_checkpoint(init_checkpoint, backbone_path=backbone_weights)
        preprocess = card0.preprocess_config()
        if card0.backbone.get("weights") == "external":
            backbone_file = Path(backbone_weights or card0.backbone["file"]).resolve()
    else:
        if backbone_weights is None and not random_backbone:
            raise TrainError(
                "no backbone: pass the DINOv3 weight file (--backbone), or a random one for "
                "tests and demos (--random-backbone)"
            )
        model = build_model(
            model_config,
            backbone_weights=backbone_weights,
            random_backbone=backbone_weights is None,
            seed=config.seed,
        )
        if backbone_weights is None:
            # timm starts LayerScale at 1e-5, which makes every block of an untrained ViT
            # (and every LoRA inside it) nearly invisible; a trained ViT has learnt gains.
            with torch.no_grad():
                blocks: Any = model.backbone.blocks
                for blk in blocks:
                    for gamma in (blk.gamma_1, blk.gamma_2):
                        if gamma is not None:
                            gamma.fill_(1.0)
        else:
            backbone_file = Path(backbone_weights).resolve()
    preprocess = preprocess or PreprocessConfig()
    if preprocess.crop_size != model.config.backbone.img_size:
        raise TrainError(
            f"crop size {preprocess.crop_size} differs from the backbone's image size "
            f"{model.config.backbone.img_size}"
        )
    if backbone_file is not None and config.backbone_epochs:
        raise TrainError("backbone pre-training is for small random backbones, not a DINOv3 file")

    model.to(dev)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    cache = PreprocessCache(cache_dir or manifest.path.parent / ".hyperct-cache", preprocess)
    started = time.time()
    bar = Progress(progress, len(train_rows) + len(val_rows), "preprocess")
    for _ in cache.warm([*train_rows, *val_rows]):
        bar.update()
    bar.close()
    say(f"preprocessed {len(train_rows) + len(val_rows)} series ({cache.misses} new)")
    val_images = [cache.images(r) for r in val_rows]
    plan = StepPlan()
    loader = image_loader(
        CachedImages(train_rows, cache, config.augment),
        plan,
        workers=workers,
        pin_memory=dev.type == "cuda",
    )

    def batches(n_rows: int) -> Any:
        """Each step's rows and images (on the device), in this epoch's planned order."""
        steps = plan_epoch(plan, n_rows, config.batch_size, rng)
        for idx, imgs in zip(steps, loader, strict=True):
            yield (
                [train_rows[i] for i in idx],
                [x.to(dev, non_blocking=True) for x in imgs],
            )

    history: list[dict[str, Any]] = []
    best_auc, best_epoch = -math.inf, -1
    phase, start_epoch = "backbone", 0
    head_state = None
    if state is not None:
        history = state["history"]
        best_auc, best_epoch = state["best_auc"], state["best_epoch"]
        phase, start_epoch = state["phase"], state["epoch"] + 1
        rng.bit_generator.state = state["np_rng"]
        torch.set_rng_state(state["torch_rng"])
        if dev.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], dev)
        head_state = state.get("head")
        if phase == "backbone" and start_epoch >= config.backbone_epochs:
            phase, start_epoch = "hyper", 0
    if config.backbone_epochs == 0 and phase == "backbone":
        phase = "hyper"

    def checkpoint(where: Path, epoch: int, auc: float) -> Path:
        card = make_card(
            model,
            name=name,
            version=version,
            validated=False,
            # No operating point until `model evaluate` chooses one on a validation split.
            thresholds={},
            preprocessing=preprocess.to_dict(),
            training_data=manifest.summary(),
            description=description
            or (
                "DEMO MODEL trained on synthetic phantoms: not for clinical use."
                if demo
                else "Trained with hyperct_core.train; validate with `model evaluate`."
            ),
        )
        card.extra = {
            "demo": demo,
            "training": {
                "recipe": config.to_dict(),
                "epoch": epoch,
                "val_mean_auc": None if math.isnan(auc) else auc,
                "selection": "best mean validation AUC" if val_rows else "last epoch (no val)",
                "backbone_training": (
                    f"random init, LayerScale 1, pre-trained on the train split for "
                    f"{config.backbone_epochs} epochs with a linear multi-label head "
                    "(demo deviation; the paper freezes a self-supervised DINOv3)"
                    if config.backbone_epochs
                    else "frozen"
                ),
                "torch": torch.__version__,
                "machine": platform.machine(),
                "device": dev.type,
                "precision": "bf16 autocast" if amp else "fp32",
                "activation_checkpointing": bool(checkpointing),
            },
        }
        save_checkpoint(model, card, where, backbone_file=backbone_file)
        return where

    def save_state(epoch: int, extra: dict[str, Any]) -> None:
        checkpoint(out / "last", epoch, history[-1].get("val_mean_auc", float("nan")))
        torch.save(
            {
                "config": config.to_dict(),
                "phase": phase,
                "epoch": epoch,
                "history": history,
                "best_auc": best_auc,
                "best_epoch": best_epoch,
                "np_rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None,
                **extra,
            },
            out / "last" / STATE_NAME,
        )
        (out / "history.json").write_text(json.dumps(history, indent=1, allow_nan=True))

    out.mkdir(parents=True, exist_ok=True)
    bs = config.batch_size
    steps = math.ceil(len(train_rows) / bs)

    # ---- phase 1 (demo only): pre-train the small backbone with a multi-label head.
    if phase == "backbone":
        d = model.config.backbone.embed_dim
        head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, len(TASK_NAMES))).to(dev)
        model.backbone.requires_grad_(True)
        params = list(model.backbone.parameters()) + list(head.parameters())
        opt = torch.optim.AdamW(
            params, lr=config.backbone_lr, betas=config.betas, eps=config.eps, weight_decay=0.0
        )
        if head_state is not None:
            head.load_state_dict(head_state["head"])
            opt.load_state_dict(head_state["optimizer"])
        for epoch in range(start_epoch, config.backbone_epochs):
            model.backbone.train()
            bar = Progress(progress, steps, f"backbone {epoch + 1}/{config.backbone_epochs}")
            losses = []
            cls_of = checkpointed_cls if checkpointing else vit_cls
            for batch, imgs in batches(len(train_rows)):
                with autocast(dev, amp):
                    feats = segment_mean(
                        cls_of(model.backbone, torch.cat(imgs)), [len(x) for x in imgs]
                    )
                    logits = head(feats).float()
                y = torch.from_numpy(np.stack([r.labels for r in batch])).to(dev)
                known = ~torch.isnan(y)
                loss = F.binary_cross_entropy_with_logits(logits[known], y[known])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
                bar.update(loss=f"{np.mean(losses[-20:]):.3f}")
            model.backbone.eval()
            entry: dict[str, Any] = {
                "phase": "backbone",
                "epoch": epoch,
                "loss": float(np.mean(losses)),
            }
            if val_rows:
                parts = []
                with torch.inference_mode(), autocast(dev, amp):
                    for j in range(0, len(val_images), config.eval_batch):
                        chunk = val_images[j : j + config.eval_batch]
                        flat = torch.cat(chunk).to(dev, non_blocking=True)
                        feats = segment_mean(vit_cls(model.backbone, flat), [len(x) for x in chunk])
                        parts.append(torch.sigmoid(head(feats).float()).cpu().numpy())
                entry.update(auc_report(np.concatenate(parts), val_rows, val_tasks))
                entry["val_mean_auc"] = entry.pop("mean_auc")
            bar.close(
                loss=f"{entry['loss']:.3f}",
                val_auc=f"{entry.get('val_mean_auc', float('nan')):.3f}",
            )
            history.append(entry)
            say(_line(entry))
            save_state(epoch, {"head": {"head": head.state_dict(), "optimizer": opt.state_dict()}})
        model.backbone.requires_grad_(False)
        model.backbone.eval()
        phase, start_epoch = "hyper", 0
        state = None

    # ---- phase 2: the spec's recipe, backbone frozen.
    trainable = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    # Built after model.to(dev): AdamW keeps its moments on the parameters' device.
    model.backbone.requires_grad_(False)
    opt = torch.optim.AdamW(
        trainable,
        lr=config.lr,
        betas=config.betas,
        eps=config.eps,
        weight_decay=config.weight_decay,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(config, steps))
    if state is not None and "optimizer" in state:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
    for epoch in range(start_epoch, config.epochs):
        model.train()
        bar = Progress(progress, steps, f"epoch {epoch + 1}/{config.epochs}")
        losses = []
        for batch, imgs in batches(len(train_rows)):
            tasks = sample_tasks(batch, rng)
            y = torch.tensor(
                [float(r.labels[t]) for r, t in zip(batch, tasks, strict=True)], device=dev
            )
            with autocast(dev, amp):
                logits = forward_logits(
                    model, imgs, torch.tensor(tasks, device=dev), checkpointing=checkpointing
                )
            loss = F.binary_cross_entropy_with_logits(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.update(loss=f"{np.mean(losses[-20:]):.3f}")
        entry = {
            "phase": "hyper",
            "epoch": epoch,
            "loss": float(np.mean(losses)),
            "lr": float(opt.param_groups[0]["lr"]),
        }
        auc = float("nan")
        if val_rows:
            report = auc_report(
                val_scores(model, val_images, val_rows, val_tasks, config.eval_batch, dev, amp),
                val_rows,
                val_tasks,
            )
            auc = report["mean_auc"]
            entry.update({"val_mean_auc": auc, "auc": report["auc"]})
        bar.close(loss=f"{entry['loss']:.3f}", val_auc=f"{auc:.3f}")
        history.append(entry)
        say(_line(entry))
        better = (not val_rows and epoch == config.epochs - 1) or (
            val_rows and not math.isnan(auc) and auc > best_auc
        )
        if better:
            best_auc, best_epoch = auc, epoch
            checkpoint(out / "best", epoch, auc)
        save_state(epoch, {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()})
    if best_epoch < 0:
        raise TrainError("no epoch produced a validation AUC (is the val split labelled?)")
    say(f"best epoch {best_epoch + 1}: val mean AUC {best_auc:.3f}; {time.time() - started:.0f} s")
    return TrainResult(out / "best", out / "last", best_epoch, best_auc, history)


def _line(entry: dict[str, Any]) -> str:
    auc = entry.get("val_mean_auc")
    text = f"{entry['phase']} epoch {entry['epoch'] + 1}: loss {entry['loss']:.4f}"
    if auc is not None:
        text += f", val mean AUC {auc:.3f}"
    return text
