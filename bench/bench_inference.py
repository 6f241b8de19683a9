"""All-task inference benchmark: one study, 25 tasks, full ViT-B/16 at 144 x 144.

Everything is measured in one run against anchors from the same run: the plain timm
backbone on the same images (the overhead ratio) and a 4096^3 matrix product (achieved
fraction of the machine's matmul rate). Random weights; speed does not depend on them.

    .venv/bin/python bench/bench_inference.py            # full (several minutes on 2 cores)
    .venv/bin/python bench/bench_inference.py --plain-reps 3 --skip-lowrank   # reduced
    .venv/bin/python bench/bench_inference.py --device cuda   # batch of 8 studies on a GPU

``--device`` (auto, cpu, cuda, cuda:N): on CUDA, studies/s for a batch of 8 studies in
bf16 and the dense-equivalent fraction of the bf16 matmul rate measured in the same run
(bar: 0.5), with the peak GPU memory; on a CPU, fp32, and bf16 only where the CPU
multiplies bf16 natively (AVX512-BF16 or AMX; elsewhere bf16 is emulated and slower).
``--model demo`` times the small demo architecture instead of ViT-B/16 (plumbing checks).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

from hyperct_core.device import cpu_has_native_bf16, resolve_device
from hyperct_core.inference import Predictor
from hyperct_core.model import HyperCTConfig, build_model

#: The CUDA all-task path should reach at least this dense-equivalent fraction of the
#: bf16 matmul rate measured in the same run.
CUDA_BAR = 0.5


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def matmul_rate(dtype: torch.dtype, device: torch.device, n: int = 4096, reps: int = 3) -> float:
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)  # warm-up
    best = min(timed(lambda: torch.mm(a, b), device) for _ in range(reps))
    return 2 * n**3 / best


def flops_per_image(cfg: HyperCTConfig, size: int) -> dict[str, float]:
    """Dense FLOPs of one image pass, and what the all-task path saves or adds per task."""
    b = cfg.backbone
    d, h, r = b.embed_dim, b.mlp_hidden, cfg.hypernet.rank
    patches = (size // b.patch_size) ** 2
    t = patches + b.num_prefix_tokens
    patch = 2 * patches * 3 * b.patch_size**2 * d
    lin = 2 * t * (4 * d * d + 2 * d * h)  # qkv, proj, fc1, fc2 per block
    att = 2 * 2 * t * t * d
    dense = patch + b.depth * (lin + att)
    lora = 2 * t * r * (4 * 2 * d + 2 * (d + h))  # per block, low-rank terms of 6 targets
    shared_qkv = 2 * t * 3 * d * d  # block 0's frozen qkv: once for all tasks
    last_saved = 2 * (t - 1) * (d * d + 2 * d * h) + 2 * 2 * (t - 1) * t * d  # CLS-only tail
    merge_per_task = 2 * r * b.depth * (4 * d * d + 2 * d * h)  # W + s B A, not per image
    lora_qkv0 = 2 * t * r * 3 * (d + d)  # merge path: block 0's q, k, v stay low-rank
    return {
        "dense": dense,
        "patch": patch,
        "lora_block": lora,
        "shared_qkv": shared_qkv,
        "last_saved": last_saved,
        "merge_per_task": merge_per_task,
        "lora_qkv0": lora_qkv0,
    }


def machine() -> dict[str, str]:
    def sh(cmd: str) -> str:
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
        except OSError:
            return ""

    info = {
        "date": sh("date"),
        "nproc": sh("nproc"),
        "cpu": sh("lscpu | grep 'Model name'").replace("Model name:", "").strip(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": str(torch.get_num_threads()),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_cpu(args: argparse.Namespace, cfg: HyperCTConfig, model, study: torch.Tensor) -> dict:
    dev = torch.device("cpu")
    n, tasks = study.shape[0], cfg.hypernet.num_tasks
    f = flops_per_image(cfg, args.size)
    dense_study = tasks * n * f["dense"]
    out: dict[str, object] = {"dense_flops_per_study": dense_study}
    executed = (
        tasks * n * (f["dense"] + f["lora_block"] * cfg.backbone.depth)
        - (tasks - 1) * n * f["shared_qkv"]
        - (tasks - 1) * n * f["patch"]
        - tasks * n * f["last_saved"]
    )
    out["executed_flops_per_study_lowrank"] = executed
    out["executed_flops_per_study_merge"] = (
        tasks * n * f["dense"]
        - (tasks - 1) * n * (f["shared_qkv"] + f["patch"])
        - tasks * n * f["last_saved"]
        + tasks * f["merge_per_task"]
        + tasks * n * f["lora_qkv0"]
    )
    probs = {}
    dtypes = [("fp32", torch.float32)]
    if cpu_has_native_bf16():
        dtypes.append(("bf16", torch.bfloat16))
    else:
        out["bf16"] = "not timed: this CPU has no native bf16 (emulated bf16 is slower than fp32)"
    for name, dtype in dtypes:
        rate = matmul_rate(dtype, dev)
        plain = copy.deepcopy(model.backbone).to(dtype)
        x = study.to(dtype)
        with torch.inference_mode():
            plain.forward_features(x[:2])  # warm-up
            per_pass = [
                timed(partial(plain.forward_features, x), dev) for _ in range(args.plain_reps)
            ]
        plain_study = float(np.mean(per_pass)) * tasks
        del plain
        res = {
            "matmul_4096_flops_per_s": rate,
            "plain_backbone_s_per_pass": float(np.mean(per_pass)),
            "plain_backbone_passes_timed": args.plain_reps,
            "plain_backbone_s_per_study_x25": plain_study,
            "plain_backbone_fraction_of_matmul": tasks * n * f["dense"] / plain_study / rate,
        }
        strategies = ["merge"] if args.skip_lowrank else ["merge", "lowrank"]
        for strategy in strategies:
            pred = Predictor(model, device=dev, dtype=dtype, strategy=strategy)
            pred.predict([study[:2]])  # warm-up

            def once(pred: Predictor = pred, key: tuple[str, str] = (name, strategy)) -> None:
                probs[key] = pred.predict([study])

            secs = timed(once, dev)
            flops = out[f"executed_flops_per_study_{strategy}"]
            res[strategy] = {
                "s_per_study": secs,
                "overhead_ratio_vs_plain_x25": secs / plain_study,
                "achieved_flops_per_s": flops / secs,
                "fraction_of_matmul": flops / secs / rate,
                "dense_equivalent_fraction_of_matmul": dense_study / secs / rate,
            }
            del pred
        out[name] = res
    if ("bf16", "merge") in probs:
        out["bf16_max_abs_prob_diff_vs_fp32"] = float(
            np.abs(probs[("bf16", "merge")] - probs[("fp32", "merge")]).max()
        )
    return out


def run_cuda(
    args: argparse.Namespace, cfg: HyperCTConfig, model, study: torch.Tensor, dev: torch.device
) -> dict:
    n, tasks = study.shape[0], cfg.hypernet.num_tasks
    f = flops_per_image(cfg, args.size)
    rate = matmul_rate(torch.bfloat16, dev, reps=10)
    batch = [study] * args.gpu_studies
    out: dict[str, object] = {"matmul_4096_bf16_flops_per_s": rate, "studies_per_batch": len(batch)}
    plain = copy.deepcopy(model.backbone).to(dev, torch.bfloat16)
    x = torch.cat(batch).to(dev, torch.bfloat16)
    with torch.inference_mode():
        plain.forward_features(x)
        secs = min(timed(partial(plain.forward_features, x), dev) for _ in range(3)) * tasks
    out["plain_backbone_s_per_batch_x25"] = secs
    del plain, x
    for strategy in ("lowrank", "merge"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        pred = Predictor(model, device=dev, dtype=torch.bfloat16, strategy=strategy,
                         images_per_pass=args.gpu_images_per_pass)  # fmt: skip
        pred.predict(batch)
        t = min(timed(partial(pred.predict, batch), dev) for _ in range(3))
        dense = len(batch) * tasks * n * f["dense"]
        fraction = dense / t / rate
        out[strategy] = {
            "s_per_batch": t,
            "studies_per_s": len(batch) / t,
            "overhead_ratio_vs_plain_x25": t / secs,
            "dense_equivalent_fraction_of_bf16_matmul": fraction,
            "bar": CUDA_BAR,
            "meets_bar": fraction >= CUDA_BAR,
            "peak_gpu_memory_gib": torch.cuda.max_memory_allocated(dev) / 2**30,
        }
        del pred
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=55)
    p.add_argument("--size", type=int, default=144)
    p.add_argument("--plain-reps", type=int, default=25, help="plain backbone passes timed")
    p.add_argument("--skip-lowrank", action="store_true", help="CPU: time only 'merge'")
    p.add_argument("--gpu-studies", type=int, default=8)
    p.add_argument("--gpu-images-per-pass", type=int, default=64)
    p.add_argument("--json", help="also write results here")
    p.add_argument(
        "--device", default="auto", help="auto (CUDA if present, else the CPU), cpu, cuda or cuda:N"
    )
    p.add_argument("--model", choices=("vitb", "demo"), default="vitb")
    args = p.parse_args()
    torch.manual_seed(0)
    if args.model == "demo":
        from hyperct_core.train import demo_setup

        cfg = demo_setup()[0]
        args.size = cfg.backbone.img_size
    else:
        cfg = HyperCTConfig()
    model = build_model(cfg, random_backbone=True, seed=0).eval()
    study = torch.randn(args.images, 3, args.size, args.size)
    result = {"machine": machine(), "model": args.model, "images": args.images, "size": args.size}
    result["flops_per_image"] = flops_per_image(cfg, args.size)
    dev = resolve_device(args.device)
    if dev.type == "cuda":
        result["cuda"] = run_cuda(args, cfg, model, study, dev)
    cpu_wanted = args.device == "cpu" or (args.device == "auto" and dev.type == "cpu")
    if cpu_wanted and os.environ.get("BENCH_SKIP_CPU") != "1":
        result["cpu"] = run_cpu(args, cfg, model, study)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
