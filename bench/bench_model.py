"""Per preset: parameters, GFLOPs (torch.utils.flop_counter) and CPU forward time of one input.

RGB presets run a 640x640 image, latent presets a 40x40 latent (the 640x640 frame). Random weights; the
numbers depend on the architecture only.

    python bench/bench_model.py [--presets mnet-biubug6 latent-r50] [--repeat 5] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from nbsrc.config import get_preset, list_presets
from nbsrc.model import build_model


def bench_preset(name: str, repeat: int, size: int = 640) -> dict:
    cfg = get_preset(name, **{"model.pretrained": "none"})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if model.input_kind == "latent":
        side = size // model.latent_stride
        x = torch.randn(1, model.in_channels, side, side)
    else:
        x = torch.randn(1, 3, size, size)
    params = sum(p.numel() for p in model.parameters())
    with torch.inference_mode():
        counter = FlopCounterMode(display=False)
        with counter:
            out = model(x)
        flops = counter.get_total_flops()
        times = []
        for _ in range(repeat + 1):  # the first run warms up
            start = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - start) * 1000)
    return {
        "preset": name,
        "input": list(x.shape),
        "anchors": int(out["conf"].shape[1]),
        "params_M": round(params / 1e6, 3),
        "gflops": round(flops / 1e9, 2),
        "cpu_ms": round(statistics.median(times[1:]), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="*", default=None, help="presets to measure (default: all)")
    parser.add_argument("--repeat", type=int, default=5, help="timed forward passes (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="also write the rows as JSON to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [bench_preset(name, args.repeat) for name in (args.presets or list_presets())]
    header = f"| preset | input | anchors | params (M) | GFLOPs | CPU ms ({torch.get_num_threads()} threads) |"
    lines = [header, "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        shape = "x".join(str(v) for v in r["input"][1:])
        lines.append(
            f"| {r['preset']} | {shape} | {r['anchors']:,} | {r['params_M']:.2f} | {r['gflops']:.2f} | {r['cpu_ms']:.0f} |"
        )
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json:
        from nbsrc.utils import atomic_write_text

        atomic_write_text(args.json, json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
