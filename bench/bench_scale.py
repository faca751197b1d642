"""Benchmark: the data path on a full-size dataset of the retina-modify shape.

Lays out once (reused by later runs; ``--rebuild`` starts over) under ``--root`` (default
``/tmp/nbsrc-scale``)::

    <root>/retina-modify/{train,val}/latent/<basename>/latent_75.npy   float16 [256, 40, 40]
    <root>/retina-modify/{train,val}/labels.txt                         RetinaFace format, ORIGINAL pixels
    <root>/retina-modify/train/latent/labels.txt                        a stray copy, as in the real dataset
    <root>/image_sizes.csv                                              name,width,height of every original
    <root>/widerface/WIDER_{train,val}/images/<event>/<basename>.jpg    with --images-tree: solid-colour JPEGs

12,880 train + 3,226 val images (``--train`` / ``--val``), one rate, ~13 GB of latents: a few distinct random
payloads written again and again (each file a complete ``.npy``; ``--link`` hardlinks them instead, which takes no
disk but leaves every read in the page cache). The val split is the real WIDER FACE val ground truth
(``--gt``: 3,226 images, 39,708 faces, its events and names); the train split cycles those images under new
names (about 159,000 faces, WIDER train has 159,424). Original sizes are 1024 px wide with common WIDER heights
(683, 768, 1024, ... taller when a box reaches lower), so the boxes are in original pixels as in the real
labels. Faces at least 20 px on their short side get 5 landmarks. As in the real dataset, the dataset folder holds
no sizes: they come from the sizes CSV beside it (``--sizes csv``: ``data.sizes_csv``) or from the JPEG headers of
the WIDER tree (``--sizes tree``: ``data.images_root``, read once and cached as a CSV in ``<root>/cache``).

Then it measures, each in a fresh Python process:

- indexing: ``build_dataset(cfg, split, train=...)`` of train and val with the ``latent-r50`` preset (twice: with
  ``--sizes tree`` the first process reads the JPEG headers, the second the cached sizes);
- ``python -m nbsrc check-data --dataset_root ROOT`` (every latent read for NaN/Inf) and with ``--quick``;
- notebooks 01 and 02 executed headless (``python -m nbsrc run-notebooks 01_data_inspection
  02_anchor_statistics -p dataset_root ROOT -p sizes_csv CSV -p faces dataset -p split train --out ...``: 02 on
  the dataset's train faces, its heaviest input), seconds per notebook;
- one epoch of the ``latent-r50`` training DataLoader (batch 32) with 2 and 4 workers, no model: images/s.

    python bench/bench_scale.py [--root /tmp/nbsrc-scale] [--images-tree] [--sizes csv|tree]
                                [--only index,check,notebooks,loading] [--profile DIR] [--json OUT]

Targets on a 2-core machine: indexing <= 30 s, each notebook <= 5 min. Run it with ``nice -n 10`` on a shared
machine. Latents just written sit in the page cache as far as memory allows; the loading rates are those of a warm
cache, a cold disk is slower.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_ROOT = Path(tempfile.gettempdir()) / "nbsrc-scale"
DEFAULT_GT = ROOT.parent / "shared" / "data" / "widerface_val_gt"
DATASET = "retina-modify"
MARKER = ".nbsrc-scale-complete"  # JSON of the build parameters, written last
LAYOUT = 2  # bumped when the layout changes (an older build is replaced)
IMAGES_MARKER = ".nbsrc-scale-images-complete"
RATE_FILE = "latent_75.npy"
LATENT_SHAPE = (256, 40, 40)
PAYLOADS = 32  # distinct latent payloads cycled over the files
WIDER_HEIGHTS = (683, 768, 1024, 576, 819, 1366, 1536)  # common heights of 1024-wide WIDER images
HEIGHT_WEIGHTS = (0.45, 0.2, 0.1, 0.08, 0.07, 0.06, 0.04)
LANDMARK_MIN_SIDE = 20  # faces with a shorter side get no landmarks (-1), as small WIDER faces
LANDMARKS = ((0.31, 0.38), (0.69, 0.38), (0.50, 0.58), (0.35, 0.78), (0.65, 0.78))  # fractions of the box
TARGETS = {"index": 30.0, "notebook": 300.0}
PRESET = "latent-r50"


# ---- the dataset ---------------------------------------------------------------------------------------------
def _sizes(boxes_xywh: list[np.ndarray], rng: np.random.Generator) -> list[tuple[int, int]]:
    """An original (width, height) per image: 1024 wide (wider when a box reaches past), a common WIDER height
    that holds every box (or the lowest box edge plus a margin)."""
    heights = np.asarray(WIDER_HEIGHTS)
    weights = np.asarray(HEIGHT_WEIGHTS)
    out = []
    for boxes in boxes_xywh:
        right = float((boxes[:, 0] + np.maximum(boxes[:, 2], 0)).max()) if len(boxes) else 0.0
        bottom = float((boxes[:, 1] + np.maximum(boxes[:, 3], 0)).max()) if len(boxes) else 0.0
        width = max(1024, int(np.ceil(right)))
        fits = heights >= bottom
        if fits.any():
            p = weights[fits] / weights[fits].sum()
            height = int(rng.choice(heights[fits], p=p))
        else:
            height = int(np.ceil(bottom)) + int(rng.integers(0, 64))
        out.append((width, height))
    return out


def _records(names: list[str], boxes_xywh: list[np.ndarray], sizes: list[tuple[int, int]], rng: np.random.Generator):
    """`ImageRecord` per image: xyxy boxes, landmarks on faces with a short side >= `LANDMARK_MIN_SIDE`."""
    from nbsrc.data.records import FACE, ImageRecord

    fractions = np.asarray(LANDMARKS, np.float32)  # (5, 2)
    records = []
    for name, xywh, size in zip(names, boxes_xywh, sizes):
        xywh = np.asarray(xywh, np.float32).reshape(-1, 4)  # (n, 4)
        n = len(xywh)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)  # (n, 4)
        valid = np.minimum(xywh[:, 2], xywh[:, 3]) >= LANDMARK_MIN_SIDE  # (n,)
        jitter = rng.uniform(-0.04, 0.04, (n, 5, 2)).astype(np.float32)
        landmarks = np.round(xywh[:, None, :2] + (fractions + jitter) * xywh[:, None, 2:], 3)  # (n, 5, 2)
        landmarks = np.where(valid[:, None, None], landmarks, 0.0).astype(np.float32)
        score = np.where(valid, np.round(rng.uniform(0.3, 0.95, n), 2), -1.0).astype(np.float32)
        flags = np.where(valid[:, None], 0.0, -1.0).astype(np.float32) * np.ones((n, 5), np.float32)
        records.append(
            ImageRecord(
                name=name,
                boxes=boxes,
                landmarks=landmarks,
                landmarks_valid=valid,
                labels=np.full(n, FACE, np.int64),
                image_size=size,
                attributes={"landmark_flags": flags, "score": score},
            )
        )
    return records


def _payloads(count: int, seed: int) -> list[bytes]:
    """`count` complete ``.npy`` files (header + data) of float16 `LATENT_SHAPE` latents."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        latent = (rng.standard_normal(LATENT_SHAPE, np.float32) * rng.uniform(0.5, 2.0)).astype(np.float16)
        buffer = io.BytesIO()
        np.save(buffer, latent, allow_pickle=False)
        out.append(buffer.getvalue())
    return out


def _write_latents(split_dir: Path, basenames: list[str], payloads: list[Path], link: bool) -> None:
    latent_dir = split_dir / "latent"
    blobs = [p.read_bytes() for p in payloads] if not link else []
    for i, base in enumerate(basenames):
        folder = latent_dir / base
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / RATE_FILE
        if link:
            os.link(payloads[i % len(payloads)], target)
        else:
            with open(target, "wb") as fh:
                fh.write(blobs[i % len(blobs)])


def build_dataset_tree(root: Path, *, train: int, val: int, gt_dir: Path, link: bool, seed: int = 0) -> Path:
    """Write the dataset (see the module docstring) unless `root` holds a complete one of the same parameters.

    Returns:
        The dataset root ``<root>/retina-modify``.
    """
    from nbsrc.data.readers.retinaface_txt import write_retinaface_labels
    from nbsrc.data.readers.wider_mat import read_wider_gt
    from nbsrc.utils import atomic_write_text

    params = {"train": train, "val": val, "seed": seed, "link": link, "gt": str(gt_dir), "layout": LAYOUT}
    dataset = root / DATASET
    marker = root / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return dataset
    if root.exists():
        if any(root.iterdir()) and not marker.is_file():
            raise SystemExit(f"{root} is not empty and holds no {MARKER}: choose another --root")
        shutil.rmtree(root)
    root.mkdir(parents=True)
    t0 = time.perf_counter()
    gt = read_wider_gt(gt_dir, attributes=False)
    names = gt.image_names()
    boxes = [b for per_event in gt.boxes for b in per_event]  # xywh per image, file order
    rng = np.random.default_rng(seed)
    val_names = [names[i % len(names)] for i in range(val)]
    val_names = [n if i < len(names) else f"{n}_v{i // len(names)}" for i, n in enumerate(val_names)]
    val_boxes = [boxes[i % len(boxes)] for i in range(val)]
    train_names = [f"{names[i % len(names)]}_t{i // len(names)}" for i in range(train)]
    train_boxes = [boxes[i % len(boxes)] for i in range(train)]
    sizes_rows = []
    payload_dir = root / "payloads"
    payload_dir.mkdir()
    payloads = []
    for k, blob in enumerate(_payloads(PAYLOADS, seed)):
        payloads.append(payload_dir / f"latent_{k}.npy")
        payloads[-1].write_bytes(blob)
    for split, split_names, split_boxes in (("train", train_names, train_boxes), ("val", val_names, val_boxes)):
        split_dir = dataset / split
        split_dir.mkdir(parents=True)
        sizes = _sizes(split_boxes, rng)
        records = _records(split_names, split_boxes, sizes, rng)
        write_retinaface_labels(split_dir / "labels.txt", records)
        sizes_rows += [f"{name}.jpg,{w},{h}" for name, (w, h) in zip(split_names, sizes)]
        sys.stdout.write(
            f"writing {len(split_names):,} {split} latents ({RATE_FILE}, float16 {list(LATENT_SHAPE)})...\n"
        )
        sys.stdout.flush()
        _write_latents(split_dir, [n.rsplit("/", 1)[-1] for n in split_names], payloads, link)
    shutil.copyfile(dataset / "train" / "labels.txt", dataset / "train" / "latent" / "labels.txt")
    atomic_write_text(root / "image_sizes.csv", "name,width,height\n" + "\n".join(sizes_rows) + "\n")
    if not link:
        shutil.rmtree(payload_dir)
    marker.write_text(json.dumps(params))
    sys.stdout.write(f"dataset written in {time.perf_counter() - t0:.0f} s: {dataset}\n")
    return dataset


def build_images_tree(root: Path, dataset: Path) -> dict[str, Path]:
    """``<root>/WIDER_{train,val}/images/<event>/<basename>.jpg``: one solid-colour JPEG per original, of its size
    (same bytes for every image of a size). Returns split -> images folder."""
    import cv2

    folders = {split: root / "widerface" / f"WIDER_{split}" / "images" for split in ("train", "val")}
    marker = root / IMAGES_MARKER
    if marker.is_file():
        return folders
    sizes = {}
    for line in (root / "image_sizes.csv").read_text().splitlines()[1:]:
        name, width, height = line.rsplit(",", 2)
        sizes[name] = (int(width), int(height))
    encoded: dict[tuple[int, int], bytes] = {}
    t0 = time.perf_counter()
    for split, folder in folders.items():
        names = [
            line[2:] for line in (dataset / split / "labels.txt").read_text().splitlines() if line.startswith("# ")
        ]
        for name in names:
            size = sizes[name]
            if size not in encoded:
                image = np.full((size[1], size[0], 3), (96, 128, 160), np.uint8)
                ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 75])
                if not ok:
                    raise RuntimeError(f"JPEG encoding of a {size[0]}x{size[1]} image failed")
                encoded[size] = data.tobytes()
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encoded[size])
    marker.write_text("ok\n")
    sys.stdout.write(f"WIDER image tree written in {time.perf_counter() - t0:.0f} s ({len(encoded)} sizes)\n")
    return folders


# ---- probes: each runs in a fresh process and prints one JSON line -------------------------------------------
def data_overrides(root: Path, sizes: str) -> dict[str, str]:
    """``data.*`` overrides for the sizes source: the CSV beside the dataset, or the WIDER tree (cached sizes)."""
    overrides = {"dataset_root": str(root / DATASET)}
    if sizes == "csv":
        overrides["sizes_csv"] = str(root / "image_sizes.csv")
    else:
        overrides.update(images_root=str(root / "widerface"), cache_dir=str(root / "cache"))
    return overrides


def _profiled(profile: Path | None, name: str, fn):
    if profile is None:
        return fn()
    import cProfile

    profile.mkdir(parents=True, exist_ok=True)
    profiler = cProfile.Profile()
    result = profiler.runcall(fn)
    profiler.dump_stats(str(profile / f"{name}.prof"))
    return result


def probe_index(root: Path, sizes: str, profile: Path | None) -> dict:
    from nbsrc.config import get_preset
    from nbsrc.data.loaders import build_dataset

    cfg = get_preset(PRESET, **data_overrides(root, sizes))
    out = {}
    for split, train in (("train", True), ("val", False)):
        t0 = time.perf_counter()
        data = _profiled(profile, f"index_{split}", lambda: build_dataset(cfg, split, train=train))  # noqa: B023
        out[split] = {"s": time.perf_counter() - t0, "samples": len(data)}
    return out


def probe_loading(root: Path, sizes: str, workers: int, batch_size: int, profile: Path | None) -> dict:
    import torch

    from nbsrc.config import get_preset
    from nbsrc.data.loaders import _loader, build_dataset

    torch.set_num_threads(1)
    cfg = get_preset(PRESET, **data_overrides(root, sizes), num_workers=workers)
    train = build_dataset(cfg, cfg.data.train_split, train=True)
    loader = _loader(train, cfg, train=True, batch_size=batch_size, distributed=False)

    def epoch() -> tuple[int, float]:
        t0 = time.perf_counter()
        first = None
        count = 0
        for batch in loader:
            if first is None:
                first = time.perf_counter() - t0
            count += len(batch["names"])
        return count, first or 0.0

    t0 = time.perf_counter()
    count, first = _profiled(profile, f"loading_{workers}", epoch)
    elapsed = time.perf_counter() - t0
    return {"images": count, "s": elapsed, "per_s": count / elapsed, "first_batch_s": first, "workers": workers}


# ---- the driver -----------------------------------------------------------------------------------------------
def evict_page_cache(folders: list[Path]) -> float:
    """Drop the files below `folders` from the page cache (``POSIX_FADV_DONTNEED``; this process's files only, no
    privilege needed), so that the next measurement reads them from the disk. Returns the seconds it took."""
    t0 = time.perf_counter()
    for folder in folders:
        for dirpath, _, filenames in os.walk(folder):
            for filename in filenames:
                try:
                    fd = os.open(os.path.join(dirpath, filename), os.O_RDONLY)
                except OSError:
                    continue
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
    return time.perf_counter() - t0


def _environment(args: argparse.Namespace) -> dict[str, str]:
    return {**os.environ, "NBSRC_CACHE": str(args.root / "cache")}


def _run_probe(args: argparse.Namespace, probe: str, *extra: str) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--root", str(args.root), "--sizes", args.sizes]
    command += ["--probe", probe, "--batch-size", str(args.batch_size), *extra]
    if args.profile is not None:
        command += ["--profile", str(args.profile)]
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=_environment(args))
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"probe {probe} failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = wall
    return result


def _run_command(args: argparse.Namespace, command: list[str]) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=_environment(args))
    return done.returncode, time.perf_counter() - t0, done.stdout + done.stderr


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help=f"bench folder (default {DEFAULT_ROOT})")
    parser.add_argument("--train", type=int, default=12880, help="train images (default 12,880)")
    parser.add_argument("--val", type=int, default=3226, help="val images (default 3,226)")
    parser.add_argument("--gt", type=Path, default=DEFAULT_GT, help="WIDER val ground-truth folder (.mat files)")
    parser.add_argument("--link", action="store_true", help="hardlink a few latent files instead of writing copies")
    parser.add_argument("--images-tree", action="store_true", help="also write a WIDER JPEG tree (for --sizes tree)")
    parser.add_argument(
        "--sizes",
        choices=("csv", "tree"),
        default="csv",
        help="original sizes from the sizes CSV (data.sizes_csv, default) or the JPEG tree (data.images_root)",
    )
    parser.add_argument("--cold", action="store_true", help="drop the dataset from the page cache before each step")
    parser.add_argument("--rebuild", action="store_true", help="write the dataset again")
    parser.add_argument(
        "--only",
        default="index,check,notebooks,loading",
        help="measurements, comma-separated: index, check, notebooks, loading (default all)",
    )
    parser.add_argument("--workers", default="2,4", help="DataLoader workers to time, comma-separated (default 2,4)")
    parser.add_argument("--batch-size", type=int, default=32, help="DataLoader batch (default 32)")
    parser.add_argument("--profile", type=Path, default=None, help="write cProfile stats of each probe here")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON here")
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--probe-arg", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.root = args.root.resolve()
    return args


def run_probe(args: argparse.Namespace) -> int:
    """Inside a fresh process: one probe, its result as a JSON line."""
    if args.probe == "index":
        result = probe_index(args.root, args.sizes, args.profile)
    elif args.probe == "loading":
        result = probe_loading(args.root, args.sizes, int(args.probe_arg), args.batch_size, args.profile)
    else:
        raise SystemExit(f"unknown probe {args.probe!r}")
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


class Measurements:
    """The measurements of one run on `dataset`: the numbers (``report``, JSON-ready) and the table rows."""

    def __init__(self, args: argparse.Namespace, dataset: Path) -> None:
        self.args, self.dataset = args, dataset
        self.data = data_overrides(args.root, args.sizes)
        self.report: dict = {
            "cpu_count": os.cpu_count(),
            "load_average_start": os.getloadavg(),
            "dataset": str(dataset),
            "sizes": args.sizes,
            "cold": args.cold,
        }
        self.rows: list[tuple[str, str, str]] = []

    def add(self, label: str, seconds: float, note: str = "", target: float | None = None) -> None:
        verdict = "" if target is None else f"  target <= {target:.0f} s: {'PASS' if seconds <= target else 'FAIL'}"
        self.rows.append((label, f"{seconds:.1f}", note + verdict))
        sys.stdout.write(f"  {label}: {seconds:.1f} s {note}{verdict}\n")
        sys.stdout.flush()

    def cold(self) -> None:
        if self.args.cold:
            self.report.setdefault("evict_s", []).append(evict_page_cache([self.args.root]))

    def index(self) -> None:
        shutil.rmtree(self.args.root / "cache", ignore_errors=True)  # sizes read from the JPEG headers the first time
        for attempt in ("first", "again"):
            self.cold()
            result = _run_probe(self.args, "index")
            self.report[f"index_{attempt}"] = result
            seconds = result["train"]["s"] + result["val"]["s"]
            self.add(
                f"indexing train + val ({attempt} process)",
                seconds,
                f"train {result['train']['s']:.1f} s / {result['train']['samples']:,} samples, val "
                f"{result['val']['s']:.1f} s / {result['val']['samples']:,}; process {result['process_s']:.1f} s",
                TARGETS["index"],
            )

    def check(self) -> None:
        data = self.data
        sizes = (
            ["--sizes_csv", data["sizes_csv"]] if self.args.sizes == "csv" else ["--images_root", data["images_root"]]
        )
        for label, extra in (("check-data (values read)", []), ("check-data --quick (headers only)", ["--quick"])):
            self.cold()
            rc, seconds, output = _run_command(
                self.args,
                [sys.executable, "-m", "nbsrc", "check-data", "--dataset_root", str(self.dataset), *sizes, *extra],
            )
            tail = [line for line in output.splitlines() if line.startswith(("defects:", "no defects"))]
            self.report[label] = {"s": seconds, "rc": rc, "defects": tail[-1] if tail else output[-400:]}
            self.add(label, seconds, f"exit {rc}, {tail[-1] if tail else 'no summary line'}")

    def notebooks(self) -> None:
        with tempfile.TemporaryDirectory(prefix="bench_scale_nb_") as out:
            sizes_param = ["-p", "sizes_csv", self.data["sizes_csv"]] if self.args.sizes == "csv" else []
            if self.args.sizes == "tree":
                sizes_param = ["-p", "images_root", self.data["images_root"]]
            command = [sys.executable, "-m", "nbsrc", "run-notebooks", "01_data_inspection", "02_anchor_statistics"]
            command += ["-p", "dataset_root", str(self.dataset), *sizes_param, "-p", "faces", "dataset"]
            command += ["-p", "split", "train", "--out", out]
            self.report["notebooks_command"] = " ".join(command)
            self.cold()
            rc, seconds, output = _run_command(self.args, command)
            summary_path = Path(out) / "summary.json"
            summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {"notebooks": []}
            self.report["notebooks"] = {"rc": rc, "s": seconds, "summary": summary}
            if rc != 0:
                sys.stdout.write(output[-4000:] + "\n")
            for entry in summary["notebooks"]:
                self.add(
                    f"notebook {entry['name']}",
                    float(entry.get("duration_s", float("nan"))),
                    entry["status"],
                    TARGETS["notebook"],
                )

    def loading(self) -> None:
        for workers in [int(w) for w in self.args.workers.split(",") if w.strip()]:
            self.cold()
            result = _run_probe(self.args, "loading", "--probe-arg", str(workers))
            self.report[f"loading_{workers}"] = result
            self.add(
                f"one epoch of {PRESET} training batches of {self.args.batch_size}, {workers} workers",
                result["s"],
                f"{result['images']:,} images, {result['per_s']:.0f} images/s (first batch {result['first_batch_s']:.1f} s)",
            )

    def table(self) -> str:
        rows, report = self.rows, self.report
        widths = [max(len(r[i]) for r in rows + [("what", "s", "")]) for i in range(3)]
        lines = ["", "  ".join(h.ljust(w) for h, w in zip(("what", "s", "notes"), widths))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
        lines.append(
            f"sizes from the {'sizes CSV' if self.args.sizes == 'csv' else 'JPEG tree'}"
            f"{', page cache dropped before each step' if self.args.cold else ''}; load average "
            f"{report['load_average_start'][0]:.1f} -> {report['load_average_end'][0]:.1f} on {report['cpu_count']} CPUs"
        )
        return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.probe is not None:  # inside a fresh process
        return run_probe(args)

    if args.rebuild and (args.root / MARKER).is_file():
        shutil.rmtree(args.root)
    dataset = build_dataset_tree(args.root, train=args.train, val=args.val, gt_dir=args.gt, link=args.link)
    if args.images_tree or args.sizes == "tree":
        build_images_tree(args.root, dataset)
    run = Measurements(args, dataset)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    for name in ("index", "check", "notebooks", "loading"):
        if name in only:
            getattr(run, name)()
    run.report["load_average_end"] = os.getloadavg()
    sys.stdout.write(run.table())
    if args.json is not None:
        args.json.write_text(json.dumps(run.report, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
