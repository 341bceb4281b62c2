"""``lapose bench-train``: training throughput (clips/s) and peak memory per stage and preset.

Each measurement runs in a fresh subprocess so that peak memory (CUDA allocator peak, or the process's
maximum resident set on CPU) belongs to that configuration alone. Batches are synthetic tensors of the
real shapes: the data pipeline decodes into memory once, so the model step is what is measured.
A configuration whose weights + AdamW state alone would not fit the device's memory is skipped with
that estimate printed.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

BYTES_PER_TRAINABLE_PARAM = 16  # fp32 weight + grad + two AdamW moments


def synthetic_batch(cfg, batch_size: int, device):
    import torch

    m = cfg.model
    T = m.num_frames
    poses = torch.eye(4, device=device).repeat(batch_size, T, 1, 1)
    poses[..., 2, 3] = torch.arange(T, device=device, dtype=torch.float32) * 1.2
    return {"frames": torch.rand(batch_size, T, 3, m.image_height, m.image_width, device=device),
            "timestamps": (torch.arange(T, device=device) * 0.5).float().repeat(batch_size, 1),
            "poses": poses, "fov": torch.full((batch_size,), 1.4, device=device)}


def measure(preset_name: str, stage: str, steps: int, batch_size: int, device: str,
            recompute: bool = False) -> dict:
    import torch

    from .config import preset
    from .model.lapose import LaPose

    cfg = preset(preset_name)
    dev = torch.device(device)
    with dev:
        model = LaPose(cfg.model)
    model.set_stage(stage)
    model.recompute_activations(recompute)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    batch = synthetic_batch(cfg, batch_size, dev)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda")

    def step():
        with autocast:
            loss, _ = model(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up: allocator, lazy optimiser state
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    dt = time.perf_counter() - t0
    return {"preset": preset_name, "stage": stage, "device": device, "batch": batch_size,
            "recompute": recompute,
            "clips_per_s": steps * batch_size / dt, "step_s": dt / steps, "peak_mib": peak,
            "trainable_m": sum(p.numel() for p in params) / 1e6}


def available_bytes(device: str) -> int:
    import torch

    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info()
        return free
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def trainable_params(preset_name: str, stage: str) -> int:
    import torch

    from .config import preset
    from .model.lapose import TRAINABLE, LaPose

    with torch.device("meta"):
        model = LaPose(preset(preset_name).model)
    trainable = TRAINABLE["posttrain_frozen" if stage == "posttrain" else stage]
    return sum(p.numel() for n, c in model.named_children() if n in trainable for p in c.parameters())


def run_bench_train(args: argparse.Namespace) -> int:
    rows = []
    print(f"{'preset':<7} {'stage':<10} {'device':<6} {'batch':>5} {'clips/s':>9} {'step s':>8} "
          f"{'peak MiB':>9} {'trainable M':>11}")
    for preset_name in args.presets.split(","):
        for stage in args.stages.split(","):
            need = trainable_params(preset_name, stage) * BYTES_PER_TRAINABLE_PARAM
            have = available_bytes(args.device)
            if need > 0.8 * have:
                print(f"{preset_name:<7} {stage:<10} {args.device:<6} skipped: weights + AdamW state "
                      f"alone need ~{need / 2**30:.1f} GiB, {have / 2**30:.1f} GiB free")
                continue
            out = subprocess.run(
                [sys.executable, "-m", "lapose_core.bench_train", preset_name, stage, str(args.steps),
                 str(args.batch_size), args.device, str(int(args.recompute_activations))],
                capture_output=True, text=True)
            if out.returncode != 0:
                reason = (out.stderr.strip().splitlines() or ["no output"])[-1]
                print(f"{preset_name:<7} {stage:<10} {args.device:<6} failed: {reason}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(r)
            print(f"{r['preset']:<7} {r['stage']:<10} {r['device']:<6} {r['batch']:>5} "
                  f"{r['clips_per_s']:>9.2f} {r['step_s']:>8.3f} {r['peak_mib']:>9.0f} "
                  f"{r['trainable_m']:>11.1f}")
    return 0 if rows else 1


if __name__ == "__main__":
    p, s, n, b, d, r = sys.argv[1:7]
    print(json.dumps(measure(p, s, int(n), int(b), d, recompute=r == "1")))
