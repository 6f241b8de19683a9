"""Training throughput: images per second through one HyperCT training step.

A step is the spec's recipe on a batch of volumes (each with its own task): hypernetwork
forward, LoRA backbone forward over every image, masked mean, classifier, BCE, backward
into the hypernetwork and classifier, AdamW update. Each configuration is compared with
an anchor measured in the same run: the plain frozen backbone's forward pass over the
same images (no LoRA, no gradient), so the ratio says what training costs relative to
inference with the bare backbone. Random weights and random images: speed does not
depend on them.

The step runs as ``model train`` runs it on that device (:mod:`hyperct_core.train`): on
CUDA with bf16 autocast and activation checkpointing through the backbone, reporting the
peak GPU memory of the spec's batch (8 volumes x 55 images); on a CPU in fp32, plus bf16
autocast only where the CPU multiplies bf16 natively (elsewhere bf16 is emulated and
would only measure the emulation).

    .venv/bin/python bench/bench_train.py                   # tiny demo model + ViT-B/16
    .venv/bin/python bench/bench_train.py --skip-full       # tiny demo model only
    .venv/bin/python bench/bench_train.py --full-batch 1    # ViT-B/16 within 24 GB of RAM
    .venv/bin/python bench/bench_train.py --device cuda     # the spec's batch on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time

import torch
import torch.nn.functional as F

from hyperct_core.device import cpu_has_native_bf16, resolve_device
from hyperct_core.lora import vit_cls
from hyperct_core.model import HyperCT, HyperCTConfig, build_model
from hyperct_core.train import demo_setup
from hyperct_core.train_step import forward_logits


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(
    model: HyperCT,
    images_per_volume: int,
    batch: int,
    steps: int,
    device: torch.device,
    *,
    amp: bool = False,
    checkpointing: bool = False,
) -> dict[str, object]:
    size = model.config.backbone.img_size
    g = torch.Generator().manual_seed(0)
    vols = [
        torch.randn(images_per_volume, 3, size, size, generator=g).to(device) for _ in range(batch)
    ]
    tasks = torch.arange(batch, device=device) % model.config.hypernet.num_tasks
    y = (torch.arange(batch, device=device) % 2).float()
    model.to(device).train()
    params = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = forward_logits(model, vols, tasks, checkpointing=checkpointing)
        loss = F.binary_cross_entropy_with_logits(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    step_s = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None

    flat = torch.cat(vols)
    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp),
    ):
        vit_cls(model.backbone, flat)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            vit_cls(model.backbone, flat)
        sync(device)
    plain_s = (time.perf_counter() - t0) / steps
    n = images_per_volume * batch
    return {
        "precision": "bf16 autocast" if amp else "fp32",
        "activation_checkpointing": checkpointing,
        "peak_gpu_memory_gib": None if peak is None else peak / 2**30,
        "images_per_step": n,
        "step_s": step_s,
        "train_images_per_s": n / step_s,
        "plain_forward_images_per_s": n / plain_s,
        "ratio_step_to_plain_forward": step_s / plain_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--full-steps", type=int, default=2)
    ap.add_argument("--skip-full", action="store_true")
    ap.add_argument(
        "--full-batch",
        type=int,
        default=8,
        help="volumes per ViT-B/16 step (the spec's 8 needs ~30 GB of activations on CPU)",
    )
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--json", help="also write the report here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cuda":
        settings = [(True, True)]  # as `model train` runs on CUDA: bf16 autocast, checkpointing
    else:
        settings = [(False, False)] + ([(True, False)] if cpu_has_native_bf16() else [])
    cpu = "?"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        cpu = next(
            (line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line),
            "?",
        )
    except OSError:
        pass
    report: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{platform.machine()} {cpu}, {os.cpu_count()} CPUs, {args.threads} threads",
        "torch": torch.__version__,
        "device": str(device),
    }
    model_config, preprocess, recipe = demo_setup()
    tiny = build_model(model_config, random_backbone=True, seed=0)
    n_img = preprocess.volume_size // 3  # no all-air slices in a phantom
    config = (
        f"ViT {model_config.backbone.embed_dim}-wide x {model_config.backbone.depth}, "
        f"patch {model_config.backbone.patch_size}, {preprocess.crop_size} px, "
        f"{n_img} images/volume, batch {recipe.batch_size}"
    )
    report["tiny_demo"] = [
        {
            "config": config,
            **measure(
                tiny, n_img, recipe.batch_size, args.steps, device, amp=amp, checkpointing=ckpt
            ),
        }  # fmt: skip
        for amp, ckpt in settings
    ]
    print(json.dumps(report["tiny_demo"], indent=1), flush=True)
    if not args.skip_full:
        full = build_model(HyperCTConfig(), random_backbone=True, seed=0)
        # Spec input: 164 slices -> 55 images of 144 x 144 per volume, batch 8.
        config = (
            f"ViT-B/16 (vit_base_patch16_dinov3), 144 px, 55 images/volume, batch {args.full_batch}"
        )
        report["vit_b16_spec"] = [
            {
                "config": config,
                **measure(
                    full, 55, args.full_batch, args.full_steps, device, amp=amp, checkpointing=ckpt
                ),
            }  # fmt: skip
            for amp, ckpt in settings
        ]
        print(json.dumps(report["vit_b16_spec"], indent=1), flush=True)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
