"""``hyperct-agent model info PATH``: show a checkpoint's card and parameter counts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("model", help="inspect HyperCT checkpoints")
    msub = p.add_subparsers(dest="model_command", metavar="ACTION")
    msub.required = True
    info = msub.add_parser("info", help="print a checkpoint's model card and parameter counts")
    info.add_argument("path", type=Path, help="checkpoint directory (or its model.safetensors)")
    info.add_argument(
        "--backbone", type=Path, help="backbone weight file, if not where the card says"
    )
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=run_info)


def model_info(path: Path, backbone: Path | None = None) -> dict[str, Any]:
    """Card and parameter counts of a checkpoint (loads and verifies it fully)."""
    from hyperct_core.checkpoint import load_checkpoint

    model, card = load_checkpoint(path, backbone_path=backbone)
    return {"card": card.to_dict(), "parameters": model.parameter_counts()}


def format_info(info: dict[str, Any]) -> str:
    card, counts = info["card"], info["parameters"]
    state = "VALIDATED" if card["validated"] else "DEMO / NOT VALIDATED: not for clinical use"
    bb = card["backbone"]
    where = "embedded" if bb.get("weights") == "embedded" else f"external file {bb.get('file')}"
    lines = [
        f"{card['name']} {card['version']}  [{state}]",
        f"format: {card['format']}",
        f"backbone: {bb.get('identity')} ({where})",
        f"lora: rank {card['lora']['rank']}, scale {card['lora']['scale']}; "
        f"head input size {card['head_input_size']}",
        f"training data: {json.dumps(card['training_data'], sort_keys=True)}",
        f"preprocessing: {json.dumps(card['preprocessing'], sort_keys=True)}",
        f"tasks ({len(card['tasks'])}), operating thresholds:",
    ]
    lines += [
        f"  {i:2d} {name:<38s} {card['thresholds'].get(name, float('nan')):.4f}"
        for i, name in enumerate(card["tasks"])
    ]
    lines.append("parameters:")
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
    info = model_info(args.path, args.backbone)
    print(json.dumps(info, indent=2, sort_keys=True) if args.json else format_info(info))
    return 0
