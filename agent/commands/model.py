"""``hyperct-agent model``: inspect, train, evaluate HyperCT checkpoints; build the demo.

* ``model info [PATH]``: a checkpoint's card, held-out figures and parameter counts; with
  no path, the model ``serve`` would load (``[model].checkpoint`` or the bundled demo).
* ``model train MANIFEST --out RUN``: train (``hyperct_core.train``).
* ``model evaluate CHECKPOINT MANIFEST --out DIR``: AUC with CIs, decision curves,
  calibration, operating thresholds (``hyperct_core.evaluate``).
* ``model phantoms OUT --count N``: a labelled synthetic dataset with its manifest.
* ``model make-demo``: rebuild the committed demo checkpoint from phantoms.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from agent.commands import args as args_


def register(sub: Any) -> None:
    p = sub.add_parser("model", help="inspect HyperCT checkpoints")
    msub = p.add_subparsers(dest="model_command", metavar="ACTION")
    msub.required = True
    info = msub.add_parser(
        "info", help="print a checkpoint's model card, held-out figures and parameter counts"
    )
    info.add_argument(
        "path",
        type=args_.path,
        nargs="?",
        help="checkpoint directory (or its model.safetensors); default: the model serve loads",
    )
    info.add_argument("--config", type=args_.path, help="agent.toml (default: the embedded one)")
    info.add_argument(
        "--backbone", type=args_.path, help="backbone weight file, if not where the card says"
    )
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=run_info)
    _register_train(msub)
    _register_evaluate(msub)
    _register_phantoms(msub)
    demo = msub.add_parser(
        "make-demo",
        help="rebuild the demo checkpoint (hyperct_core/demo_model) from synthetic phantoms",
    )
    demo.add_argument("--out", type=args_.path, help="where to write it (default: the package's)")
    demo.add_argument("--work", type=args_.path, help="keep phantoms and the run here (resumable)")
    demo.add_argument("--threads", type=args_.threads, help="torch CPU threads")
    demo.add_argument(
        "--evaluate-only",
        action="store_true",
        help="re-evaluate the committed demo weights on the evaluation phantoms only",
    )
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(func=run_make_demo)


def _register_train(msub: Any) -> None:
    p = msub.add_parser("train", help="train HyperCT on a labelled manifest (CSV)")
    p.add_argument("manifest", type=args_.path, help="manifest CSV (see hyperct_core.dataset)")
    p.add_argument("--out", type=args_.path, required=True, help="run folder (best/, last/)")
    p.add_argument(
        "--preset",
        choices=("paper", "demo"),
        default="paper",
        help="paper: ViT-B/16 + spec recipe; demo: small ViT pre-trained on the data",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--backbone", type=args_.path, help="DINOv3 ViT-B/16 weight file (operator-supplied)"
    )
    src.add_argument(
        "--random-backbone",
        action="store_true",
        help="random backbone weights (tests and demo models only)",
    )
    src.add_argument("--init", type=args_.path, help="start from this checkpoint (fine-tuning)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--epochs", type=args_.integer(1, 100_000))
    p.add_argument("--batch-size", type=args_.integer(1, 4096))
    p.add_argument("--lr", type=args_.number(0.0, 10.0))
    p.add_argument("--weight-decay", type=args_.number(0.0, 10.0))
    p.add_argument("--betas", type=args_.number(0.0, 0.999999), nargs=2)
    p.add_argument("--eps", type=args_.number(1e-30, 1.0))
    p.add_argument("--schedule", choices=("cosine", "step", "constant"))
    p.add_argument(
        "--step-size",
        type=args_.integer(1, 100_000),
        help="epochs between x gamma decays (step schedule)",
    )
    p.add_argument(
        "--backbone-epochs",
        type=args_.integer(0, 100_000),
        help="demo deviation: pre-train a small backbone for this many epochs",
    )
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--seed", type=args_.seed)
    p.add_argument("--cache", type=args_.path, help="preprocessing cache folder")
    p.add_argument("--name", default=None, help="model name in the card")
    p.add_argument("--model-version", default="0.1.0", help="model version in the card")
    p.add_argument("--threads", type=args_.threads, help="torch CPU threads")
    p.add_argument(
        "--device", default="auto", help="auto (first GPU, else CPU), cpu, cuda or cuda:N"
    )
    p.add_argument(
        "--checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="activation checkpointing through the backbone (default: on for CUDA only)",
    )
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto: bf16 autocast on CUDA, fp32 on the CPU",
    )
    p.add_argument(
        "--workers",
        type=args_.integer(0, 64),
        help="DataLoader processes (default: 0 on the CPU, up to 8 for a GPU)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_train)


def _register_evaluate(msub: Any) -> None:
    p = msub.add_parser("evaluate", help="AUC with CIs, decision curves, calibration, thresholds")
    p.add_argument("checkpoint", type=args_.path)
    p.add_argument("manifest", type=args_.path)
    p.add_argument(
        "--out", type=args_.path, required=True, help="folder for metrics.csv, report.html"
    )
    p.add_argument(
        "--split",
        default="test",
        choices=("train", "val", "test"),
        help="split every reported figure comes from",
    )
    p.add_argument(
        "--threshold-split",
        default="val",
        choices=("train", "val", "test", "none"),
        help="split thresholds are chosen and tasks validated on (never --split)",
    )
    p.add_argument(
        "--min-auc",
        type=args_.number(0.0, 1.0),
        default=0.6,
        help="lowest threshold-split AUC for an operating point (its CI must exclude 0.5 too)",
    )
    p.add_argument(
        "--rule",
        choices=("sensitivity", "net_benefit"),
        default="sensitivity",
        help="how operating thresholds are chosen",
    )
    p.add_argument("--target-sensitivity", type=args_.number(0.01, 1.0), default=0.9)
    p.add_argument(
        "--bootstrap", type=args_.integer(0, 1_000_000), default=1000, help="bootstrap resamples"
    )
    p.add_argument("--seed", type=args_.seed, default=0)
    p.add_argument("--cache", type=args_.path)
    p.add_argument(
        "--backbone", type=args_.path, help="backbone weight file, if not where the card says"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--write-thresholds",
        nargs="?",
        const=True,
        default=False,
        metavar="DEST",
        help="write the validated thresholds into the card (in place, or a copy at DEST)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_evaluate)


def _register_phantoms(msub: Any) -> None:
    p = msub.add_parser(
        "phantoms",
        help="write labelled synthetic chest CT phantoms + manifest "
        "(128 slices of 2.5 mm: a default serve screens them)",
    )
    p.add_argument("out", type=args_.path)
    p.add_argument("--count", type=args_.integer(1, 1_000_000), default=100)
    p.add_argument("--seed", type=args_.seed, default=0)
    p.add_argument("--format", choices=("dicom", "npz"), default="dicom")
    p.set_defaults(func=run_phantoms)


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def run_train(args: argparse.Namespace) -> int:
    import dataclasses

    from hyperct_core.train import TrainConfig, demo_setup, train

    _threads(args.threads)
    model_config = preprocess = None
    config = TrainConfig()
    if args.preset == "demo":
        model_config, preprocess, config = demo_setup()
    overrides = {
        k: v
        for k, v in {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "weight_decay": args.weight_decay,
            "eps": args.eps,
            "schedule": args.schedule,
            "step_size": args.step_size,
            "backbone_epochs": args.backbone_epochs,
            "seed": args.seed,
            "betas": tuple(args.betas) if args.betas else None,
        }.items()
        if v is not None
    }
    if args.no_augment:
        overrides["augment"] = False
    config = dataclasses.replace(config, **overrides)
    result = train(
        args.manifest,
        args.out,
        config=config,
        model_config=model_config,
        preprocess=preprocess,
        backbone_weights=args.backbone,
        random_backbone=args.random_backbone,
        init_checkpoint=args.init,
        resume=args.resume,
        cache_dir=args.cache,
        progress=not args.no_progress,
        name=args.name or ("hyperct-demo" if args.preset == "demo" else "hyperct"),
        version=args.model_version,
        demo=args.preset == "demo",
        log=print,
        device=args.device,
        checkpointing=args.checkpointing,
        precision=args.precision,
        workers=args.workers,
    )
    print(
        f"best checkpoint: {result.best} (epoch {result.best_epoch + 1}, "
        f"val mean AUC {result.best_auc:.3f})"
    )
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from hyperct_core.evaluate import evaluate

    result = evaluate(
        args.checkpoint,
        args.manifest,
        args.out,
        split=args.split,
        threshold_split=None if args.threshold_split == "none" else args.threshold_split,
        min_auc=args.min_auc,
        rule=args.rule,
        target_sensitivity=args.target_sensitivity,
        n_boot=args.bootstrap,
        seed=args.seed,
        cache_dir=args.cache,
        backbone_path=args.backbone,
        device=args.device,
        write_thresholds=args.write_thresholds,
        progress=not args.no_progress,
    )
    for g, m in result.groups.items():
        print(
            f"mean AUC ({g}, {m['tasks']} tasks): {m['auc']:.3f} "
            f"[{m['ci_low']:.3f}, {m['ci_high']:.3f}]"
        )
    for name, reason in result.not_validated.items():
        print(f"not validated, no operating point: {name} ({reason})")
    for name, path in result.files.items():
        print(f"{name}: {path}")
    return 0


def run_phantoms(args: argparse.Namespace) -> int:
    from hyperct_core.phantoms import write_phantom_dataset

    manifest = write_phantom_dataset(args.out, args.count, seed=args.seed, fmt=args.format)
    print(f"manifest: {manifest}")
    return 0


def run_make_demo(args: argparse.Namespace) -> int:
    from hyperct_core.demo import DEMO_DIR, evaluate_demo_model, make_demo_model

    _threads(args.threads)
    if args.evaluate_only:
        import shutil
        import tempfile

        from hyperct_core.demo import demo_checkpoint_path

        with tempfile.TemporaryDirectory(prefix="hyperct-demo-weights-") as tmp:
            weights = Path(tmp) / "weights"  # a copy: ``out`` may be the package folder
            shutil.copytree(demo_checkpoint_path(), weights)
            out = evaluate_demo_model(weights, args.out or DEMO_DIR, work=args.work, log=print)
        print(f"demo checkpoint: {out}")
        return 0
    out = make_demo_model(
        args.out or DEMO_DIR, work=args.work, progress=not args.no_progress, log=print
    )
    print(f"demo checkpoint: {out}")
    return 0


def model_info(
    path: Path | None, backbone: Path | None = None, config: Path | None = None
) -> dict[str, Any]:
    """Card, held-out figures and parameter counts of a checkpoint (loaded and verified).

    Without ``path``: the checkpoint ``serve`` would load with ``config``
    (``[model].checkpoint``, else the bundled demo model).
    """
    from hyperct_core.checkpoint import load_checkpoint

    source = "given path"
    if path is None:
        from agent.config import load_settings
        from agent.pipeline.model import model_source

        chosen = model_source(load_settings(config, check_files=False).model)
        path = chosen.path
        source = "bundled demo model" if chosen.is_demo else "[model].checkpoint"
    model, card = load_checkpoint(path, backbone_path=backbone)
    return {
        "path": str(path),
        "source": source,
        "card": card.to_dict(),
        "held_out": held_out_figures(card.to_dict()),
        "parameters": model.parameter_counts(),
    }


def held_out_figures(card: dict[str, Any]) -> dict[str, Any]:
    """Per task: operating point (or why none), held-out AUC with its CI, and the splits."""
    record = (card.get("extra") or {}).get("operating_points") or {}
    tasks = record.get("tasks") or {}
    out: dict[str, Any] = {
        "manifest": record.get("manifest"),
        "threshold_split": record.get("threshold_split", record.get("split")),
        "held_out_split": record.get("held_out_split"),
        "tasks": {},
    }
    for name, r in tasks.items():
        held = r.get("held_out")
        if held is None:  # a card written before thresholds and figures had separate splits
            held = {"auc": r.get("auc"), "n": r.get("n")}
        out["tasks"][name] = {
            "validated": r.get("validated", "threshold" in r),
            "reason": r.get("reason", ""),
            "threshold": card["thresholds"].get(name) if r.get("validated", True) else None,
            "held_out": held,
            "threshold_split": r.get("threshold_split"),
        }
    return out


def _pct(value: Any) -> str:
    return "  n/a" if value is None else f"{100 * float(value):5.1f}"


def format_info(info: dict[str, Any]) -> str:
    card, counts = info["card"], info["parameters"]
    state = "VALIDATED" if card["validated"] else "DEMO / NOT VALIDATED: not for clinical use"
    bb = card["backbone"]
    where = "embedded" if bb.get("weights") == "embedded" else f"external file {bb.get('file')}"
    lines = [
        f"{card['name']} {card['version']}  [{state}]",
        f"checkpoint: {info['path']} ({info['source']})",
        f"format: {card['format']}",
        f"backbone: {bb.get('identity')} ({where})",
        f"lora: rank {card['lora']['rank']}, scale {card['lora']['scale']}; "
        f"head input size {card['head_input_size']}",
        f"training data: {json.dumps(card['training_data'], sort_keys=True)}",
        f"preprocessing: {json.dumps(card['preprocessing'], sort_keys=True)}",
    ]
    held = info["held_out"]
    if held["tasks"]:
        splits = (
            f"thresholds from split {held['threshold_split']!r}, figures from split "
            f"{held['held_out_split']!r}"
            if held["held_out_split"]
            else f"thresholds and figures from the same split {held['threshold_split']!r} "
            "(an old card: its figures are not held out)"
        )
        lines.append(f"operating points ({held['manifest']}; {splits}):")
    else:
        lines.append(
            "operating points: none evaluated (`model evaluate --write-thresholds` sets them)"
        )
    lines.append(f"  {'':<38s} {'':>9s}  held-out figures (split {held['held_out_split']!r})")
    lines.append(f"  {'task':<38s} {'threshold':>9s}  AUC %  95 % CI      sens %  spec %")
    assessed = 0
    for name in card["tasks"]:
        t = held["tasks"].get(name)
        if t is None:
            # No record of how (or whether) this threshold was chosen.
            value = card["thresholds"].get(name) if not held["tasks"] else None
            thr = f"{value:9.3f}" if value is not None else "     none"
            assessed += value is not None
            lines.append(f"  {name:<38s} {thr}  not evaluated")
            continue
        h = t["held_out"]
        thr = f"{t['threshold']:9.3f}" if t["threshold"] is not None else "     none"
        assessed += t["threshold"] is not None
        ci = (
            f"{_pct(h.get('ci_low'))}-{_pct(h.get('ci_high')).strip():<5s}"
            if h.get("ci_low") is not None
            else " " * 11
        )
        row = (
            f"  {name:<38s} {thr}  {_pct(h.get('auc'))} {ci} "
            f"{_pct(h.get('sensitivity'))}   {_pct(h.get('specificity'))}"
        )
        if not t["validated"]:
            row += (
                f"  NOT VALIDATED on split {held['threshold_split']!r}: "
                f"{t['reason'] or 'no operating point'}"
            )
        lines.append(row)
    lines.append(
        f"{assessed} of {len(card['tasks'])} tasks have an operating point; "
        "the others are reported 'not assessed'"
    )
    reference = (card.get("extra") or {}).get("reference_distributions")
    if reference:
        inputs = ", ".join(sorted(reference.get("inputs") or {})) or "none recorded"
        tasks = len(reference.get("scores") or {})
        source = (reference.get("source") or {}).get("manifest")
        lines.append(f"drift reference: scores of {tasks} tasks; inputs: {inputs} ({source})")
    else:
        lines.append("drift reference: none (drift is not available; `model evaluate "
                     "--write-thresholds` records one)")  # fmt: skip
    lines.append("parameters (this code's count):")
    labels = [
        ("backbone", "backbone (frozen)"),
        ("hypernet_task_embedding", "hypernetwork: task embedding"),
        ("hypernet_trunk", "hypernetwork: trunk"),
        ("hypernet_heads", "hypernetwork: heads"),
        ("hypernet_total", "hypernetwork: total"),
        ("classifier", "classifier"),
        ("trainable", "trainable total"),
    ]
    lines += [f"  {label:<30s} {counts[key]:>13,d}" for key, label in labels]
    return "\n".join(lines)


def run_info(args: argparse.Namespace) -> int:
    info = model_info(args.path, args.backbone, args.config)
    print(json.dumps(info, indent=2, sort_keys=True) if args.json else format_info(info))
    return 0
