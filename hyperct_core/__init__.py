"""HyperCT: a frozen DINOv3 ViT adapted per task by hypernetwork-generated LoRA.

The model is a library: nothing here knows about DICOM networking or databases.

Public interface (stable; the agent uses only this)::

    load_predictor(path, device="auto", dtype="auto") -> Predictor
    Predictor.card                     the checkpoint's ModelCard
    Predictor.predict(batch)           list of (n_i, 3, H, W) tensors -> (N, 25) numpy
    build_model(config, ...)           a HyperCT model (random backbone for demos/tests)
    save_checkpoint(model, card, path) / load_checkpoint(path)
    make_card(model, ...)              a model card (demo defaults)

Names resolve lazily so that ``import hyperct_core.errors`` or ``hyperct_core.tasks``
does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_predictor": "hyperct_core.inference",
    "Predictor": "hyperct_core.inference",
    "build_model": "hyperct_core.model",
    "HyperCT": "hyperct_core.model",
    "HyperCTConfig": "hyperct_core.model",
    "BackboneConfig": "hyperct_core.backbone",
    "HyperNetConfig": "hyperct_core.hypernet",
    "ModelCard": "hyperct_core.checkpoint",
    "make_card": "hyperct_core.checkpoint",
    "save_checkpoint": "hyperct_core.checkpoint",
    "load_checkpoint": "hyperct_core.checkpoint",
    "CheckpointError": "hyperct_core.errors",
    "HyperCTError": "hyperct_core.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hyperct_core' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
