"""The demo checkpoint: a small HyperCT trained on synthetic phantoms by this project.

``serve`` and ``demo`` use it when no checkpoint is configured. It is produced by the
project's own training code from :mod:`hyperct_core.phantoms` with one command::

    hyperct-agent model make-demo

which writes phantoms (``write_phantom_dataset``), runs :func:`hyperct_core.train.train`
with :func:`hyperct_core.train.demo_setup` (small ViT pre-trained on the phantoms, then
the spec's recipe with the backbone frozen), evaluates it on a second, independent set
of phantoms (:func:`evaluate_demo_model`: thresholds by the net-benefit rule chosen on its
``val`` half, only for tasks validated there; every reported figure from its ``test``
half) and copies the best checkpoint to ``hyperct_core/demo_model/``.
``make-demo --evaluate-only`` redoes the evaluation of the committed weights alone. Its card says
``validated: false`` and ``extra.demo: true``: it has only ever seen phantoms and must
never be used on patients.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hyperct_core.errors import CheckpointError

__all__ = [
    "DEMO_DIR",
    "DEMO_RECIPE",
    "demo_checkpoint_path",
    "evaluate_demo_model",
    "make_demo_model",
]

DEMO_DIR = Path(__file__).resolve().parent / "demo_model"

# Everything that defines the demo model; recorded in its card.
DEMO_RECIPE: dict[str, Any] = {
    "phantoms": 1600,
    "phantom_shape": [64, 128, 128],
    "phantom_spacing": [5.0, 2.8, 2.8],
    "dataset_seed": 2026,
    "splits": {"train": 0.8, "val": 0.1, "test": 0.1},
    "threshold_rule": "net_benefit",
    # Thresholds and figures come from phantoms the training never saw (not even for
    # choosing the epoch): thresholds on "val", figures on "test".
    "evaluation": {
        "phantoms": 1000,
        "dataset_seed": 2027,
        "splits": {"val": 0.5, "test": 0.5},
        "min_auc": 0.6,
    },
}


def demo_checkpoint_path() -> Path:
    """Folder of the committed demo checkpoint (``model.safetensors`` + ``card.json``)."""
    if not (DEMO_DIR / "model.safetensors").is_file() or not (DEMO_DIR / "card.json").is_file():
        raise CheckpointError(
            f"the demo checkpoint is missing from {DEMO_DIR}; "
            "rebuild it with `hyperct-agent model make-demo`"
        )
    return DEMO_DIR


def make_demo_model(
    out: str | Path = DEMO_DIR,
    *,
    work: str | Path | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    recipe: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
) -> Path:
    """Generate phantoms, train, evaluate, and write the demo checkpoint to ``out``."""
    from hyperct_core.phantoms import write_phantom_dataset
    from hyperct_core.train import demo_setup, train

    recipe = {**DEMO_RECIPE, **(recipe or {})}
    say = log or (lambda _m: None)
    model_config, preprocess, config = demo_setup()
    if train_overrides:
        config = dataclasses.replace(config, **train_overrides)
    with tempfile.TemporaryDirectory(prefix="hyperct-demo-") as tmp:
        root = Path(work) if work is not None else Path(tmp)
        data = root / "phantoms"
        manifest = data / "manifest.csv"
        if not manifest.is_file():
            say(f"writing {recipe['phantoms']} phantoms to {data}")
            write_phantom_dataset(
                data,
                int(recipe["phantoms"]),
                seed=int(recipe["dataset_seed"]),
                fmt="npz",
                shape=recipe["phantom_shape"],
                spacing=recipe["phantom_spacing"],
                splits=tuple(recipe["splits"].items()),
            )
        run = root / "run"
        resume = (run / "last" / "train_state.pt").is_file()
        result = train(
            manifest,
            run,
            config=config,
            model_config=model_config,
            preprocess=preprocess,
            random_backbone=True,
            resume=resume,
            progress=progress,
            name="hyperct-demo-phantoms",
            version="1.0.0",
            demo=True,
            log=say,
        )
        evaluate_demo_model(result.best, out, work=root, recipe=recipe, log=say)
    return Path(out)


def evaluate_demo_model(
    checkpoint: str | Path,
    out: str | Path = DEMO_DIR,
    *,
    work: str | Path | None = None,
    recipe: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Evaluate ``checkpoint`` on the recipe's evaluation phantoms; write the demo to ``out``.

    Thresholds and the validated / not validated decision come from the ``val`` half,
    every figure in the card and ``metrics.csv`` from the ``test`` half.
    """
    from hyperct_core.evaluate import evaluate
    from hyperct_core.phantoms import write_phantom_dataset

    recipe = {**DEMO_RECIPE, **(recipe or {})}
    plan = recipe["evaluation"]
    say = log or (lambda _m: None)
    with tempfile.TemporaryDirectory(prefix="hyperct-demo-eval-") as tmp:
        root = Path(work) if work is not None else Path(tmp)
        data = root / "evaluation-phantoms"
        manifest = data / "manifest.csv"
        if not manifest.is_file():
            say(f"writing {plan['phantoms']} evaluation phantoms to {data}")
            write_phantom_dataset(
                data,
                int(plan["phantoms"]),
                seed=int(plan["dataset_seed"]),
                fmt="npz",
                shape=recipe["phantom_shape"],
                spacing=recipe["phantom_spacing"],
                splits=tuple(plan["splits"].items()),
            )
        staged = root / "staged"
        evaluation = evaluate(
            checkpoint,
            manifest,
            root / "evaluation",
            split="test",
            threshold_split="val",
            rule=recipe["threshold_rule"],
            min_auc=float(plan["min_auc"]),
            device="cpu",
            write_thresholds=staged,
        )
        say(
            f"held-out phantoms: mean AUC {evaluation.groups['all']['auc']:.3f} over "
            f"{evaluation.groups['all']['tasks']} tasks; operating points for "
            f"{', '.join(evaluation.thresholds) or 'none'}"
        )
        _annotate(staged, recipe, evaluation)
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("model.safetensors", "card.json"):
            shutil.copyfile(staged / name, out / name)
        shutil.copyfile(root / "evaluation" / "metrics.csv", out / "metrics.csv")
    return out


def _annotate(path: Path, recipe: dict[str, Any], evaluation: Any) -> None:
    """Record the demo recipe and held-out results in the card (re-saved, hashes updated)."""
    from hyperct_core.checkpoint import load_checkpoint, save_checkpoint

    model, card = load_checkpoint(path)
    card.validated = False
    card.description = (
        "DEMO MODEL: a small HyperCT trained only on synthetic phantoms "
        "(hyperct_core.phantoms). NOT FOR CLINICAL USE. Its outputs on real CT are "
        "meaningless; tasks the phantoms do not encode were never trained."
    )
    card.extra = {
        **card.extra,
        "demo": True,
        "not_for_clinical_use": True,
        "reproduce": "hyperct-agent model make-demo",
        "demo_recipe": recipe,
        "held_out_phantoms": {
            "split": "test half of the evaluation phantoms",
            "mean_auc": evaluation.groups["all"]["auc"],
            "auc": {t: m["auc"] for t, m in evaluation.tasks.items()},
            "validated": sorted(evaluation.thresholds),
        },
    }
    save_checkpoint(model, card, path)
