"""Matching + loss speed: the batched `MultiBoxLoss` against the classic per-image reference loss.

Same random WIDER-like batch for both (1-60 faces per image, log-uniform counts and sizes 4-300 px),
random model outputs of the right shapes (no model needed). The reference runs on CPU; ours runs on
``--device`` (default cpu). Prints median milliseconds (wall clock, and process CPU time, which stays
meaningful on a busy machine with ``--threads 1``) and the speed-up; target >= 10x on CPU.

    python bench/bench_loss.py                 # latent-r50 (204,600 anchors, B 8), mnet-biubug6 (16,800, B 32)
    python bench/bench_loss.py --device cuda --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the reference loss lives with the tests

from multibox_oracle import oracle_multibox_loss, random_outputs, random_targets  # noqa: E402

from nbsrc.anchors import AnchorGenerator  # noqa: E402
from nbsrc.config import get_preset  # noqa: E402
from nbsrc.loss import build_loss  # noqa: E402

SETUPS = {  # preset: (strides, batch size)
    "latent-r50": ([4, 8, 16, 32, 64], 8),
    "mnet-biubug6": ([8, 16, 32], 32),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn, repeats: int, device: torch.device) -> tuple[float, float]:
    """Median wall-clock and process-CPU milliseconds of `fn` (CPU time is robust to a busy machine)."""
    wall, cpu = [], []
    for _ in range(repeats):
        _sync(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - start_cpu) * 1000)
    return statistics.median(wall), statistics.median(cpu)


def bench(preset: str, *, device: torch.device, repeats: int, oracle_repeats: int, seed: int, size: int) -> dict:
    strides, batch = SETUPS[preset]
    cfg = get_preset(preset)
    anchors_cpu = AnchorGenerator.from_config(cfg.anchors, strides)((size, size))
    gen = torch.Generator().manual_seed(seed)
    counts = torch.exp(torch.rand(batch, generator=gen) * torch.log(torch.tensor(60.0))).round().clamp(1, 60)
    targets_cpu = random_targets(
        counts.long().tolist(), generator=gen, image_size=(size, size), min_side=4, max_side=300
    )
    outputs_cpu = random_outputs(batch, anchors_cpu.shape[0], cfg.model.num_classes, generator=gen)

    loss_fn = build_loss(cfg)
    anchors = anchors_cpu.to(device)
    targets = {k: v.to(device) for k, v in targets_cpu.items()}
    outputs = {k: v.to(device) for k, v in outputs_cpu.items()}

    _sync(device)
    start = time.perf_counter()
    ours = loss_fn(outputs, anchors, targets)  # first call also indexes the anchors
    _sync(device)
    cold_ms = (time.perf_counter() - start) * 1000
    ours_ms, ours_cpu_ms = _median_ms(lambda: loss_fn(outputs, anchors, targets), repeats, device)

    grad_outputs = {k: v.clone().requires_grad_(True) for k, v in outputs.items()}
    fwd_bwd_ms, _ = _median_ms(lambda: loss_fn(grad_outputs, anchors, targets)["loss"].backward(), repeats, device)

    kwargs = {"num_classes": cfg.model.num_classes, "pos_iou": cfg.loss.pos_iou, "neg_pos": 7}
    kwargs["empty_negatives"] = cfg.loss.empty_negatives
    ref = oracle_multibox_loss(outputs_cpu, anchors_cpu, targets_cpu, **kwargs)
    oracle_ms, oracle_cpu_ms = _median_ms(
        lambda: oracle_multibox_loss(outputs_cpu, anchors_cpu, targets_cpu, **kwargs),
        oracle_repeats,
        torch.device("cpu"),
    )
    rel = max(
        abs(float(ours[k]) - float(ref[k])) / max(abs(float(ref[k])), 1e-12)
        for k in ("loss", "loss_box", "loss_cls", "loss_landm")
    )
    return {
        "preset": preset,
        "device": str(device),
        "anchors": int(anchors_cpu.shape[0]),
        "batch": batch,
        "faces": int(counts.sum()),
        "faces_per_image": [int(c) for c in counts],
        "positives": int(ours["num_pos"].sum()),
        "ours_ms": round(ours_ms, 2),
        "ours_cold_ms": round(cold_ms, 2),
        "ours_fwd_bwd_ms": round(fwd_bwd_ms, 2),
        "ours_process_cpu_ms": round(ours_cpu_ms, 2),
        "reference_ms": round(oracle_ms, 1),
        "reference_process_cpu_ms": round(oracle_cpu_ms, 1),
        "speedup": round(oracle_ms / ours_ms, 1),
        "speedup_process_cpu": round(oracle_cpu_ms / max(ours_cpu_ms, 1e-3), 1),
        "max_rel_diff": rel,
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--oracle_repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = []
    for preset in args.presets:
        r = bench(
            preset,
            device=device,
            repeats=args.repeats,
            oracle_repeats=args.oracle_repeats,
            seed=args.seed,
            size=args.size,
        )
        results.append(r)
        sys.stdout.write(
            f"{r['preset']:<13} A={r['anchors']:>7,} B={r['batch']:<3} faces={r['faces']:<5} pos={r['positives']:<6} "
            f"ours[{r['device']}] {r['ours_ms']:7.1f} ms "
            f"(cold {r['ours_cold_ms']:.1f}, fwd+bwd {r['ours_fwd_bwd_ms']:.1f})"
            f" | reference[cpu] {r['reference_ms']:7.1f} ms | speed-up {r['speedup']:.1f}x wall,"
            f" {r['speedup_process_cpu']:.1f}x process CPU ({r['ours_process_cpu_ms']:.1f} vs"
            f" {r['reference_process_cpu_ms']:.1f} ms) | max rel diff {r['max_rel_diff']:.1e}"
            f" | threads {r['threads']}\n"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
