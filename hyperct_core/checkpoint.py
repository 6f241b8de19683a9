"""Checkpoints: safetensors weights plus a JSON model card, in one directory.

Layout of a checkpoint directory::

    model.safetensors   hypernet.*, classifier.* and, for a self-contained checkpoint,
                        backbone.* (timm layout); header metadata ties it to its card
    card.json           the model card (:class:`ModelCard`)

The safetensors header metadata holds a format tag, the SHA-256 of ``card.json`` and a
SHA-256 over the tensor data, so a foreign file, a card from another checkpoint, a
truncated file or flipped bits are refused with one :class:`CheckpointError` line.

The backbone is either embedded (demo models with a tiny backbone) or referenced: the
card then names the operator-supplied weight file and its SHA-256, and loading checks
that the file found is the one the model was trained with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hyperct_core.backbone import create_backbone, load_backbone_weights, read_state_dict
from hyperct_core.errors import CheckpointError
from hyperct_core.model import HyperCT, HyperCTConfig
from hyperct_core.tasks import TASKS

__all__ = [
    "FORMAT",
    "ModelCard",
    "make_card",
    "save_checkpoint",
    "load_checkpoint",
    "resolve_checkpoint",
]

FORMAT = "hyperct-checkpoint/1"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "card.json"


@dataclass
class ModelCard:
    """What a checkpoint is, how its inputs are made, and how far it can be trusted.

    ``model`` is the architecture (:meth:`HyperCTConfig.to_dict`): backbone config,
    hypernetwork config (LoRA rank, head input size) and the LoRA scale.
    ``backbone`` records the backbone identity: ``{"identity": ..., "weights":
    "embedded" | "external", "file": ..., "sha256": ...}``.
    """

    name: str
    version: str
    tasks: list[str]
    model: dict[str, Any]
    preprocessing: dict[str, Any]
    backbone: dict[str, Any]
    thresholds: dict[str, float]
    training_data: dict[str, Any]
    validated: bool
    description: str = ""
    format: str = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> HyperCTConfig:
        return HyperCTConfig.from_dict(self.model)

    @property
    def lora_rank(self) -> int:
        return int(self.model["hypernet"]["rank"])

    @property
    def lora_scale(self) -> float:
        return float(self.model["lora_scale"])

    @property
    def head_input_size(self) -> int:
        return int(self.model["hypernet"]["head_input_size"])

    def preprocess_config(self) -> Any:
        """The card's preprocessing as a ``hyperct_core.preprocess.PreprocessConfig``."""
        from hyperct_core.preprocess import PreprocessConfig

        return PreprocessConfig.from_dict(self.preprocessing)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        # Spelled out for readers of card.json; derived from ``model`` and checked on load.
        data["lora"] = {"rank": self.lora_rank, "scale": self.lora_scale}
        data["head_input_size"] = self.head_input_size
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelCard:
        if not isinstance(data, Mapping):
            raise CheckpointError("model card is not a JSON object")
        data = dict(data)
        derived = {
            "lora": data.pop("lora", None),
            "head_input_size": data.pop("head_input_size", None),
        }
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise CheckpointError(f"model card has unknown fields: {', '.join(unknown)}")
        try:
            card = cls(**data)
        except TypeError as exc:
            raise CheckpointError(f"model card is incomplete: {exc}") from None
        if card.format != FORMAT:
            raise CheckpointError(
                f"unsupported checkpoint format {card.format!r} (expected {FORMAT})"
            )
        card.config  # noqa: B018 -- validates the architecture block
        if len(card.tasks) != card.config.hypernet.num_tasks:
            raise CheckpointError(
                f"model card lists {len(card.tasks)} tasks for a model with "
                f"{card.config.hypernet.num_tasks}"
            )
        if derived["lora"] is not None and derived["lora"] != {
            "rank": card.lora_rank,
            "scale": card.lora_scale,
        }:
            raise CheckpointError("model card's lora block disagrees with its model config")
        if derived["head_input_size"] not in (None, card.head_input_size):
            raise CheckpointError("model card's head_input_size disagrees with its model config")
        return card


def make_card(
    model: HyperCT,
    *,
    name: str = "hyperct-demo",
    version: str = "0.0.0",
    validated: bool = False,
    thresholds: Mapping[str, float] | None = None,
    training_data: Mapping[str, Any] | None = None,
    preprocessing: Mapping[str, Any] | None = None,
    description: str = "",
) -> ModelCard:
    """A card for ``model``; defaults describe an unvalidated demo model.

    ``preprocessing`` defaults to :class:`hyperct_core.preprocess.PreprocessConfig`'s
    defaults. Thresholds default to 0.5 for every task (a demo has no operating points).
    """
    tasks = [t.name for t in TASKS]
    if len(tasks) != model.config.hypernet.num_tasks:
        tasks = [f"task_{i}" for i in range(model.config.hypernet.num_tasks)]
    if preprocessing is None:
        from hyperct_core.preprocess import PreprocessConfig

        preprocessing = PreprocessConfig().to_dict()
    return ModelCard(
        name=name,
        version=version,
        tasks=tasks,
        model=model.config.to_dict(),
        preprocessing=dict(preprocessing),
        backbone={"identity": model.config.backbone.identity, "weights": "embedded"},
        thresholds=dict(thresholds) if thresholds is not None else dict.fromkeys(tasks, 0.5),
        training_data=dict(training_data)
        if training_data is not None
        else {"summary": "none: random weights (demo model)"},
        validated=validated,
        description=description,
    )


def _digest(tensors: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(
    model: HyperCT,
    card: ModelCard,
    path: str | Path,
    *,
    backbone_file: str | Path | None = None,
) -> ModelCard:
    """Write ``model`` and its card to the directory ``path``; returns the card written.

    Without ``backbone_file`` the backbone weights go into the checkpoint (demo models).
    With it, the card references that file (kept as given: a relative path is resolved
    against the checkpoint directory on load) and records its SHA-256.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in (("hypernet.", model.hypernet), ("classifier.", model.classifier)):
        for k, v in module.state_dict().items():
            tensors[prefix + k] = v.detach().cpu().contiguous()
    backbone: dict[str, Any] = {"identity": model.config.backbone.identity}
    if backbone_file is None:
        for k, v in model.backbone.state_dict().items():
            tensors["backbone." + k] = v.detach().cpu().contiguous()
        backbone["weights"] = "embedded"
    else:
        target = Path(backbone_file)
        actual = target if target.is_absolute() else path / target
        if not actual.is_file():
            raise CheckpointError(f"backbone weight file not found: {actual}")
        backbone.update(weights="external", file=str(backbone_file), sha256=file_sha256(actual))
    card = dataclasses.replace(card, model=model.config.to_dict(), backbone=backbone)
    ModelCard.from_dict(card.to_dict())  # refuse to write a card that would not load
    card_text = json.dumps(card.to_dict(), indent=2, sort_keys=True) + "\n"
    metadata = {
        "format": FORMAT,
        "card_sha256": hashlib.sha256(card_text.encode()).hexdigest(),
        "weights_sha256": _digest(tensors),
    }
    _atomic_write(path / WEIGHTS_NAME, lambda p: save_file(tensors, str(p), metadata=metadata))
    _atomic_write(path / CARD_NAME, lambda p: p.write_text(card_text))
    return card


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """(weights file, card file) of a checkpoint directory or its weights file."""
    path = Path(path)
    if path.is_dir():
        weights, card = path / WEIGHTS_NAME, path / CARD_NAME
    elif path.is_file():
        weights, card = path, path.with_name(CARD_NAME)
    else:
        raise CheckpointError(f"checkpoint not found: {path}")
    for p in (weights, card):
        if not p.is_file():
            raise CheckpointError(f"checkpoint is missing {p.name}: {p.parent}")
    return weights, card


def read_card(path: str | Path) -> ModelCard:
    _, card_path = resolve_checkpoint(path)
    try:
        data = json.loads(card_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"unreadable model card {card_path}: {exc}") from None
    return ModelCard.from_dict(data)


def _read_weights(weights: Path, card_path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise CheckpointError(f"{weights.name} is not a HyperCT checkpoint")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 -- safe_open API
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors raises its own, exception-like errors
        raise CheckpointError(f"unreadable or truncated weights file {weights}: {exc}") from None
    if hashlib.sha256(card_path.read_bytes()).hexdigest() != meta.get("card_sha256"):
        raise CheckpointError(f"{card_path.name} does not belong to {weights} (card hash differs)")
    if _digest(tensors) != meta.get("weights_sha256"):
        raise CheckpointError(f"{weights} is corrupted (tensor data hash differs)")
    return tensors


def _load_strict(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor], what: str) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong = sorted(k for k in set(own) & set(tensors) if own[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        example = (missing or unexpected or wrong)[0]
        raise CheckpointError(
            f"{what} weights do not match the card's architecture ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(wrong)} misshapen, e.g. {example})"
        )
    module.load_state_dict(tensors, strict=True)


def load_checkpoint(
    path: str | Path, *, backbone_path: str | Path | None = None
) -> tuple[HyperCT, ModelCard]:
    """Load a checkpoint directory (or its ``model.safetensors``) onto the CPU.

    ``backbone_path`` overrides where an external backbone file is looked for; its
    SHA-256 must still match the card's.
    """
    weights, card_path = resolve_checkpoint(path)
    card = read_card(path)
    tensors = _read_weights(weights, card_path)
    config = card.config
    groups: dict[str, dict[str, torch.Tensor]] = {"hypernet": {}, "classifier": {}, "backbone": {}}
    for k, v in tensors.items():
        head, _, rest = k.partition(".")
        if head not in groups:
            raise CheckpointError(f"unexpected tensor {k} in {weights.name}")
        groups[head][rest] = v
    mode = card.backbone.get("weights")
    if mode == "embedded":
        if backbone_path is not None:
            raise CheckpointError("this checkpoint embeds its backbone; no backbone file is used")
        backbone = create_backbone(config.backbone, random_init=True)
        _load_strict(backbone, groups["backbone"], "backbone")
    elif mode == "external":
        if groups["backbone"]:
            raise CheckpointError("checkpoint references an external backbone but embeds one too")
        file = Path(backbone_path) if backbone_path is not None else Path(card.backbone["file"])
        if not file.is_absolute() and backbone_path is None:
            file = weights.parent / file
        if not file.is_file():
            raise CheckpointError(f"backbone weight file not found: {file}")
        expected = card.backbone.get("sha256")
        if expected and file_sha256(file) != expected:
            raise CheckpointError(
                f"backbone file {file} is not the one this model was trained with"
            )
        backbone = create_backbone(config.backbone, random_init=True)
        load_backbone_weights(backbone, read_state_dict(file))
    else:
        raise CheckpointError(f"model card has unknown backbone weights mode {mode!r}")
    backbone.requires_grad_(False).eval()
    model = HyperCT(config, backbone)
    _load_strict(model.hypernet, groups["hypernet"], "hypernetwork")
    _load_strict(model.classifier, groups["classifier"], "classifier")
    return model.eval(), card
