"""The model the agent screens with: configured weights, or the bundled demo model.

Loaded once, in the background, so the DICOM node starts at once and keeps
receiving while the model loads (or fails to).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import ModelSettings
from agent.logs import get_logger

log = get_logger("agent.model")


@dataclass(frozen=True)
class ModelSource:
    path: Path
    is_demo: bool


def model_source(settings: ModelSettings, cache: Path | None = None) -> ModelSource:
    """The configured checkpoint; else the bundled demo model.

    Where the bundled demo checkpoint is absent (an install without the package
    data), a small model with random weights is built once into ``cache``, so
    the pipeline still runs end to end; its card says so.
    """
    if settings.checkpoint is not None:
        return ModelSource(settings.checkpoint, is_demo=False)
    from hyperct_core.demo import demo_checkpoint_path
    from hyperct_core.errors import CheckpointError

    try:
        return ModelSource(demo_checkpoint_path(), is_demo=True)
    except CheckpointError as exc:
        if cache is None:
            raise
        log.warning("bundled demo model missing; using random weights", reason=str(exc))
        return ModelSource(random_demo_checkpoint(cache / "demo-random"), is_demo=True)


def random_demo_checkpoint(path: Path) -> Path:
    """A small HyperCT with seeded random weights (144 px input), built once."""
    from hyperct_core.checkpoint import CARD_NAME, make_card, save_checkpoint

    if (path / CARD_NAME).is_file():
        return path
    from hyperct_core.backbone import BackboneConfig
    from hyperct_core.hypernet import HyperNetConfig
    from hyperct_core.model import HyperCTConfig, build_model

    config = HyperCTConfig(
        BackboneConfig(embed_dim=64, depth=2, num_heads=2, img_size=144),
        HyperNetConfig(head_input_size=128),
        lora_scale=1.0,
    )
    model = build_model(config, random_backbone=True, seed=0)
    card = make_card(
        model,
        name="hyperct-demo-random",
        description="Random weights: exercises the pipeline only; its findings mean nothing.",
    )
    save_checkpoint(model, card, path)
    return path


class ModelHolder:
    """Loads the predictor on a background thread; ``get()`` waits for it."""

    def __init__(self, settings: ModelSettings, cache: Path | None = None) -> None:
        self.settings = settings
        self.cache = cache
        self._ready = threading.Event()
        self._predictor: Any = None
        self.error: str | None = None
        self.source: ModelSource | None = None
        self.identity: Any = None  # agent.report.ModelIdentity once loaded

    def start(self) -> None:
        threading.Thread(target=self._load, name="model-loader", daemon=True).start()

    def _load(self) -> None:
        try:
            from hyperct_core import load_predictor

            self.source = model_source(self.settings, self.cache)
            if self.source.is_demo:
                log.warning(
                    "screening with the bundled DEMO model: not for clinical use; "
                    "set [model].checkpoint to an operator-provided checkpoint"
                )
            from hyperct_core.device import resolve_device

            started = time.monotonic()
            # The rule `model train` and `model evaluate` use; a device not here is one line.
            device = resolve_device(self.settings.device)
            self._predictor = load_predictor(
                self.source.path, device=device, dtype=self.settings.dtype
            )
            card = self._predictor.card
            self.identity = _identity(self.source, card)
            log.info(
                "model loaded",
                name=card.name,
                version=card.version,
                training=str(card.training_data.get("summary", ""))[:120] or None,
                demo=self.identity.is_demo,
                device=str(self._predictor.device),
                seconds=round(time.monotonic() - started, 1),
            )
        except Exception as exc:  # reported, not raised: the node keeps receiving
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("model could not be loaded; series will wait in the queue", error=self.error)
        finally:
            self._ready.set()

    def get(self, timeout: float | None = None) -> Any:
        """The predictor, or None while loading or after a failure."""
        self._ready.wait(timeout)
        return self._predictor

    @property
    def loaded(self) -> bool:
        return self._predictor is not None


def _identity(source: ModelSource, card: Any) -> Any:
    """The model as reports name it; the weights digest makes a retrained model a new device."""
    from dataclasses import replace

    from agent.report import ModelIdentity
    from hyperct_core.checkpoint import file_sha256, resolve_checkpoint

    weights, _card = resolve_checkpoint(source.path)
    identity = ModelIdentity.from_card(card, file_sha256(weights))
    return replace(identity, is_demo=True) if source.is_demo else identity
