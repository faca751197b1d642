"""Benchmark: data loading throughput (samples/s) of latents and RGB images.

Latents: a generated split of ``--images`` images in the nested layout with ``[1, 256, 40, 40]`` latents (float16
and float32, read from the page cache after a warm-up pass) through `LatentWiderFace`:

- one process (``dataset[i]`` in a loop): samples/s of wall time, and samples per CPU second of the process (the
  rate one free core gives, independent of other load on the machine),
- a `DataLoader` with ``--workers`` workers, batch 32, `detection_collate` (epochs after the first; workers persist),
- with ``all_rates`` + per-channel normalization + flip, the most work per sample.

Demo data (built with ``--demo-images`` unless ``--demo ROOT`` is given): a full pass over its train split with
``--workers`` workers, and RGB loading (`WiderFaceRGB`: evaluation resize, training augmentation) in one process.

Peak memory: Python/NumPy allocations of one single-process latent pass (tracemalloc) and the peak RSS of this
process and of its finished children (DataLoader workers).

    python bench/bench_data.py [--images 300] [--workers 2] [--repeat 3] [--demo ROOT | --demo-images 48] [--json OUT]

The contract: latent loading >= 1,000 samples/s per worker from the page cache for [256, 40, 40] float32.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nbsrc.data.collate import detection_collate  # noqa: E402
from nbsrc.data.demo import make_demo_data  # noqa: E402
from nbsrc.data.latent_dataset import LatentWiderFace  # noqa: E402
from nbsrc.data.readers.retinaface_txt import write_retinaface_labels  # noqa: E402
from nbsrc.data.records import ImageRecord  # noqa: E402
from nbsrc.data.rgb_dataset import WiderFaceRGB  # noqa: E402

CONTRACT_SAMPLES_PER_S = 1000.0
RATES = (12, 25, 50, 75, 100)


def make_latent_split(folder: Path, images: int, dtype: np.dtype, seed: int = 0) -> Path:
    """``images`` labelled images with latents at every rate (labels in the 640 frame)."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(images):
        name = f"0--Parade/0_Parade_bench_{i}"
        n = int(rng.integers(0, 12))
        xy = rng.uniform(0, 560, (n, 2))
        wh = rng.uniform(8, 80, (n, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1)  # (n, 4)
        landmarks = xy[:, None] + rng.uniform(0.2, 0.8, (n, 5, 2)) * wh[:, None]  # (n, 5, 2)
        records.append(ImageRecord(name, boxes, landmarks, np.ones(n, bool)))
        for rate in RATES:
            path = folder / "latent" / name.split("/")[1] / f"latent_{rate}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, rng.standard_normal((1, 256, 40, 40), np.float32).astype(dtype))
    write_retinaface_labels(folder / "labels.txt", records)
    return folder


def single_process(dataset, repeat: int) -> dict:
    """Samples/s of ``dataset[i]`` over the whole dataset (median of `repeat` passes, after a warm-up pass)."""
    for i in range(len(dataset)):
        dataset[i]
    wall, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(len(dataset)):
            dataset[i]
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    n = len(dataset)
    return {"samples": n, "per_s": n / statistics.median(wall), "per_cpu_s": n / statistics.median(cpu)}


def with_workers(dataset, workers: int, repeat: int, batch_size: int = 32) -> dict:
    """Samples/s of full `DataLoader` passes (the first pass starts the workers and is not counted)."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        collate_fn=detection_collate,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        generator=torch.Generator().manual_seed(0),
    )
    times = []
    for epoch in range(repeat + 1):
        t0 = time.perf_counter()
        count = sum(len(batch["names"]) for batch in loader)
        if epoch:
            times.append(time.perf_counter() - t0)
    assert count == len(dataset)
    per_s = len(dataset) / statistics.median(times)
    return {"samples": len(dataset), "workers": workers, "per_s": per_s, "per_worker_s": per_s / max(1, workers)}


def traced_peak_mb(dataset) -> float:
    tracemalloc.start()
    for i in range(len(dataset)):
        dataset[i]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300, help="generated latent images (default 300)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes per measurement (median; default 3)")
    parser.add_argument("--demo", type=Path, default=None, help="an existing demo dataset root (default: build one)")
    parser.add_argument("--demo-images", type=int, default=48, help="train images of the built demo (default 48)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON here")
    return parser.parse_args(argv)


class Report:
    """The numbers of a run (``report``, JSON-ready) and the rows of its table."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []
        self.report: dict = {"cpu_count": os.cpu_count(), "load_average": os.getloadavg()}

    def add(self, label: str, result: dict) -> None:
        self.report[label] = result
        per_cpu = f"{result['per_cpu_s']:.0f}" if "per_cpu_s" in result else "-"
        per_worker = f"{result['per_worker_s']:.0f}" if "per_worker_s" in result else "-"
        self.rows.append((label, f"{result['per_s']:.0f}", per_cpu, per_worker))
        sys.stdout.write(f"  {label}: {result['per_s']:.0f} samples/s\n")
        sys.stdout.flush()


def bench_latents(tmp: Path, args: argparse.Namespace, out: Report) -> None:
    """Generated float16 and float32 latent splits: one process and `args.workers` workers."""
    for dtype in (np.float16, np.float32):
        name = np.dtype(dtype).name
        sys.stdout.write(f"generating {args.images} images x {len(RATES)} rates of [1, 256, 40, 40] {name}...\n")
        split = make_latent_split(tmp / name / "train", args.images, dtype)
        dataset = LatentWiderFace(split, label_frame=640)
        out.add(f"latent {name}, 1 process", single_process(dataset, args.repeat))
        out.add(f"latent {name}, {args.workers} workers", with_workers(dataset, args.workers, args.repeat))
        if dtype == np.float32:
            out.report["traced_peak_mb_latent_pass"] = traced_peak_mb(dataset)
            heavy = LatentWiderFace(split, label_frame=640, all_rates=True, normalize=True, flip=True)
            out.add(f"latent {name} all rates+norm+flip, 1 process", single_process(heavy, 1))


def bench_demo(tmp: Path, args: argparse.Namespace, out: Report) -> None:
    """The demo dataset (``--demo`` or one built): its latents, and its RGB images resized and augmented."""
    demo = args.demo
    if demo is None:
        sys.stdout.write(f"building a demo dataset with {args.demo_images} train images...\n")
        t0 = time.perf_counter()
        demo = make_demo_data(tmp / "demo", images=args.demo_images, seed=0)
        out.report["demo_build_s"] = time.perf_counter() - t0
    train = LatentWiderFace(demo / "train")
    out.add(
        f"demo train latents ({len(train)}), {args.workers} workers", with_workers(train, args.workers, args.repeat)
    )
    rgb_eval = WiderFaceRGB(demo / "train", train=False, max_images=32)
    out.add("RGB 640 eval resize, 1 process", single_process(rgb_eval, 1))
    rgb_train = WiderFaceRGB(demo / "train", train=True, max_images=32)
    out.add("RGB 640 train augmentation, 1 process", single_process(rgb_train, 1))
    out.add(f"RGB 640 train augmentation, {args.workers} workers", with_workers(rgb_train, args.workers, 1, 8))


def summary(out: Report, workers: int) -> str:
    """The table, the load, the peak memory and the throughput contract's verdict."""
    report, rows = out.report, out.rows
    header = ("what", "samples/s", "per CPU s", "per worker")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(4)]
    lines = ["", "  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    f32 = report["latent float32, 1 process"]
    f32_workers = report[f"latent float32, {workers} workers"]
    best = max(f32["per_cpu_s"], f32_workers["per_worker_s"])
    lines += [
        "",
        f"load average {report['load_average'][0]:.1f} on {report['cpu_count']} CPUs (wall rates drop with other load; "
        "'per CPU s' is the rate of one free core)",
        f"peak memory: {report['traced_peak_mb_latent_pass']:.1f} MiB traced in a float32 latent pass; peak RSS "
        f"{report['peak_rss_mb']:.0f} MiB (this process), {report['peak_rss_children_mb']:.0f} MiB (largest worker)",
        f"contract: [256, 40, 40] float32 latents >= {CONTRACT_SAMPLES_PER_S:.0f} samples/s per worker: "
        f"{best:.0f} -> {'PASS' if best >= CONTRACT_SAMPLES_PER_S else 'FAIL'}",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    out = Report()
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        bench_latents(Path(tmp), args, out)
        bench_demo(Path(tmp), args, out)
    out.report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.report["peak_rss_children_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    sys.stdout.write(summary(out, args.workers))
    if args.json is not None:
        args.json.write_text(json.dumps(out.report, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
