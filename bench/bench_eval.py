"""Benchmark: WIDER FACE evaluation of the full val set, ours vs the published evaluation script.

Builds a deterministic prediction folder from the real val ground truth (``--per-image`` predictions per image,
about 70 by default: jittered true faces, small faces missed, duplicates and random false positives), then times

- ``python -m nbsrc evaluate --pred DIR --gt GT`` as a user runs it (a fresh process: imports, the four ``.mat``
  files, 3,226 result files, the evaluation, the table), wall and CPU time,
- ``evaluate(pred_dir, gt_dir)`` in this process, reading the result files alone (`read_result_folder`), and the
  evaluation with the ground truth already read,
- the reference, once: the published ``widerface_evaluate/evaluation.py`` (the WIDER toolkit port in biubug6's
  repository, ``docs/prior-art.md`` 7.1): its reading and its evaluation as written (``tests/wider_oracle.py``:
  line-by-line reading, per-prediction and per-threshold Python loops), with the box overlaps computed by NumPy
  in the arithmetic of its compiled Cython ``bbox_overlaps`` (the script as run, once its ``np.float`` is fixed);
- with ``--oracle``, also the test oracle itself, whose overlaps are a pure-Python loop (much slower; not what
  users of the published script wait for),

and reports the peak memory of our evaluation (tracemalloc, which NumPy reports to) and the process peak RSS.

    python bench/bench_eval.py [--gt ../shared/data/widerface_val_gt] [--per-image 70] [--repeat 7]
        [--no-reference] [--oracle]

With ``--predict PRESET ...`` it instead times dataset-wide prediction (`nbsrc.evaluation.predict`): forward and
post-processing (decode + NMS) in ms per image and the post-processing share, per preset, on a demo dataset
(``--dataset_root`` for another one; untrained weights unless ``--weight``; GPU when present):

    python bench/bench_eval.py --predict latent-r18 mnet-biubug6 [--images 24] [--batch-size 8] [--device auto]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from nbsrc.data.readers.wider_mat import read_wider_gt  # noqa: E402
from nbsrc.evaluation.results import read_result_folder, write_wider_results  # noqa: E402
from nbsrc.evaluation.widerface import evaluate, evaluate_curves  # noqa: E402


def make_predictions(gt, out_dir: Path, per_image: int, seed: int = 0) -> int:
    """Write one result file per val image; returns the number of predictions."""
    rng = np.random.default_rng(seed)
    total = 0
    for event, names, boxes in zip(gt.events, gt.names, gt.boxes):
        for name, faces in zip(names, boxes):
            faces = faces.astype(np.float64)
            size = np.sqrt(np.maximum(faces[:, 2], 1) * np.maximum(faces[:, 3], 1))
            found = faces[rng.random(len(faces)) < np.clip(size / 30, 0.05, 0.97)][:per_image]
            sizes = np.maximum(found[:, 2:], 1)
            xy = found[:, :2] + rng.normal(0, 0.08, (len(found), 2)) * sizes
            wh = found[:, 2:] * np.exp(rng.normal(0, 0.08, (len(found), 2)))
            score = np.clip(0.3 + 0.6 * np.tanh(np.sqrt(sizes.prod(1)) / 40) + rng.normal(0, 0.1, len(found)), 0.02, 1)
            n_fp = max(0, per_image - len(found))
            fp_xy = rng.random((n_fp, 2)) * 1000
            fp_wh = rng.random((n_fp, 2)) * 80 + 2
            xy, wh = np.concatenate([xy, fp_xy]), np.maximum(np.concatenate([wh, fp_wh]), 0)
            score = np.concatenate([score, rng.random(n_fp) * 0.5 + 0.02])
            write_wider_results(out_dir, f"{event}/{name}", np.concatenate([xy, xy + wh], 1), score)
            total += len(score)
    return total


def bbox_overlaps_compiled(boxes: np.ndarray, query_boxes: np.ndarray) -> np.ndarray:
    """The published Cython ``bbox_overlaps`` (+1-pixel areas and intersections), in NumPy: the same operations in
    the same order on float64, so the same values, at compiled speed."""
    iw = np.minimum(boxes[:, None, 2], query_boxes[None, :, 2]) - np.maximum(boxes[:, None, 0], query_boxes[None, :, 0])
    iw += 1  # (N, K)
    ih = np.minimum(boxes[:, None, 3], query_boxes[None, :, 3]) - np.maximum(boxes[:, None, 1], query_boxes[None, :, 1])
    ih += 1  # (N, K)
    box_area = (query_boxes[:, 2] - query_boxes[:, 0] + 1) * (query_boxes[:, 3] - query_boxes[:, 1] + 1)  # (K,)
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)  # (N,)
    inter = iw * ih
    ua = areas[:, None] + box_area[None, :] - inter
    overlaps = np.zeros(inter.shape)
    hit = (iw > 0) & (ih > 0)
    overlaps[hit] = inter[hit] / ua[hit]
    return overlaps


@contextlib.contextmanager
def published_script():
    """`wider_oracle.evaluation` as the published script runs: its overlaps compiled (`bbox_overlaps_compiled`)."""
    import wider_oracle

    pure_python = wider_oracle.bbox_overlaps
    wider_oracle.bbox_overlaps = bbox_overlaps_compiled
    try:
        yield wider_oracle.evaluation
    finally:
        wider_oracle.bbox_overlaps = pure_python


def time_cli(pred_dir: Path, gt_dir: str, repeat: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds (user + system) of ``python -m nbsrc evaluate`` in a fresh process, `repeat` times."""
    command = [sys.executable, "-m", "nbsrc", "evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir)]
    walls, cpus = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        walls.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr}")
    return walls, cpus


def bench_predict(args) -> int:
    """Forward vs post-processing time of dataset-wide prediction, per preset."""
    import torch

    from nbsrc.config import get_preset
    from nbsrc.detector import Detector
    from nbsrc.evaluation.predict import build_predict_dataset, predict_dataset
    from nbsrc.model import build_model

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.dataset_root) if args.dataset_root else None
        if root is None:
            from nbsrc.data.demo import make_demo_data

            root = make_demo_data(Path(tmp) / "demo", images=args.images, seed=0, val_images=args.images)
        report = {}
        for preset in args.predict:
            if args.weight:
                detector = Detector.from_checkpoint(args.weight, preset=preset, device=args.device)
            else:
                torch.manual_seed(0)
                cfg = get_preset(preset).replace(**{"model.pretrained": "none"})
                detector = Detector(build_model(cfg), cfg, args.device)
            dataset = build_predict_dataset(detector.cfg, root, "val")
            warm = predict_dataset(  # warm-up (allocator, cuDNN autotuning)
                detector, dataset, Path(tmp) / f"warm_{preset}", batch_size=args.batch_size, progress=False
            )
            stats = predict_dataset(
                detector, dataset, Path(tmp) / preset, batch_size=args.batch_size, progress=False, resume=False
            )
            del warm
            report[preset] = stats.to_dict() | {"device": str(detector.device), "images_timed": stats.written}
            sys.stdout.write(
                f"{preset} on {detector.device}, {stats.written} images, batch {args.batch_size}: "
                f"forward {stats.forward_ms:.2f} ms/image, post-processing {stats.postprocess_ms:.2f} ms/image "
                f"({100 * stats.postprocess_share:.1f}% of forward + post-processing), "
                f"{stats.detections / max(stats.written, 1):.0f} detections/image\n"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gt", default=str(ROOT.parent / "shared" / "data" / "widerface_val_gt"))
    parser.add_argument("--per-image", type=int, default=70, help="predictions per image at most (default 70)")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--no-reference", action="store_true", help="skip the published script (about 35 s)")
    parser.add_argument("--oracle", action="store_true", help="also time the pure-Python test oracle (minutes)")
    parser.add_argument("--pred", default=None, help="reuse / keep the prediction folder here")
    parser.add_argument("--json", default=None, help="write the numbers as JSON")
    parser.add_argument("--predict", nargs="+", default=None, metavar="PRESET", help="time prediction instead")
    parser.add_argument("--dataset_root", default=None, help="--predict: dataset (default: a demo dataset)")
    parser.add_argument("--weight", default=None, help="--predict: checkpoint (default: untrained weights)")
    parser.add_argument("--images", type=int, default=24, help="--predict: demo images per split")
    parser.add_argument("--batch-size", type=int, default=8, help="--predict: images per forward pass")
    parser.add_argument("--device", default="auto", help="--predict: auto | cpu | cuda")
    return parser.parse_args()


def median(values: list[float]) -> float:
    return float(np.median(values))


def bench_ours(pred_dir: Path, gt, gt_dir: str, repeat: int) -> tuple[dict, dict[str, list[float]]]:
    """Our evaluation timed: the CLI in a fresh process, in this process end to end, the reading alone, with the
    ground truth already read; and its peak memory. Returns the report and the timings (seconds)."""
    names = gt.image_names()
    evaluate(pred_dir, gt)  # warm-up (imports, allocator, page cache)
    times: dict[str, list[float]] = {"end_to_end": [], "reading": [], "preloaded": []}
    times["cli_wall"], times["cli_cpu"] = time_cli(pred_dir, gt_dir, repeat)
    for _ in range(repeat):
        t0 = time.perf_counter()
        ours = evaluate(pred_dir, gt_dir)
        times["end_to_end"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        read_result_folder(pred_dir, names, columns=(5, 6))
        times["reading"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        evaluate(pred_dir, gt)
        times["preloaded"].append(time.perf_counter() - t0)
    tracemalloc.start()
    evaluate(pred_dir, gt_dir)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    report = {
        "images": gt.num_images,
        "predictions": evaluate_curves(pred_dir, gt).num_predictions,
        "cpus": os.cpu_count(),
        "ap": ours,
        "cli_wall_s": median(times["cli_wall"]),
        "cli_cpu_s": median(times["cli_cpu"]),
        "ours_end_to_end_s": median(times["end_to_end"]),
        "ours_reading_s": median(times["reading"]),
        "ours_gt_preloaded_s": median(times["preloaded"]),
        "peak_memory_mb": peak / 2**20,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # process so far (Linux: KiB)
    }
    return report, times


def write_ours(report: dict, times: dict[str, list[float]]) -> None:
    images = report["images"]
    sys.stdout.write(
        f"{report['predictions']} predictions on {images} images ({os.cpu_count()} CPUs)\n"
        f"python -m nbsrc evaluate --pred DIR --gt GT (fresh process): median {report['cli_wall_s']:.3f} s wall "
        f"(min {min(times['cli_wall']):.3f}), {report['cli_cpu_s']:.3f} s CPU\n"
        f"ours in process, end to end (read .mat + {images} files + evaluate): median "
        f"{report['ours_end_to_end_s']:.3f} s (min {min(times['end_to_end']):.3f})\n"
        f"  of which reading the result files: median {report['ours_reading_s']:.3f} s "
        f"(min {min(times['reading']):.3f})\n"
        f"ours, ground truth already read: median {report['ours_gt_preloaded_s']:.3f} s "
        f"(min {min(times['preloaded']):.3f})\n"
        f"peak memory of one evaluation (tracemalloc, NumPy included): {report['peak_memory_mb']:.1f} MiB; "
        f"peak RSS of the process so far: {report['peak_rss_mb']:.0f} MiB\n"
        f"AP ours: {json.dumps(report['ap'])}\n"
    )


def bench_reference(pred_dir: Path, gt_dir: str, report: dict) -> None:
    """The published evaluation script, once (time and AP difference added to `report`)."""
    ours = report["ap"]
    with published_script() as reference:
        t0 = time.perf_counter()
        published = reference(str(pred_dir), gt_dir)
        report["reference_s"] = time.perf_counter() - t0
    report["reference"] = "published widerface_evaluate/evaluation.py (reading + evaluation, compiled overlaps)"
    report["reference_ap"] = published
    report["speedup_vs_cli"] = report["reference_s"] / report["cli_wall_s"]
    report["reference_max_abs_diff"] = max(abs(published[s] - ours[s]) for s in ours)
    sys.stdout.write(
        f"reference, the published evaluation.py (its reading and evaluation, overlaps as compiled): "
        f"{report['reference_s']:.1f} s -> {report['speedup_vs_cli']:.0f}x the CLI's wall time; "
        f"max |dAP| = {report['reference_max_abs_diff']:.2e}\n"
    )


def bench_oracle(pred_dir: Path, gt_dir: str, report: dict) -> None:
    """The test oracle (pure-Python overlaps), once (time and AP difference added to `report`)."""
    import wider_oracle

    ours = report["ap"]
    t0 = time.perf_counter()
    oracle = wider_oracle.evaluation(str(pred_dir), gt_dir)
    report["oracle_s"] = time.perf_counter() - t0
    report["oracle_max_abs_diff"] = max(abs(oracle[s] - ours[s]) for s in ours)
    sys.stdout.write(
        f"test oracle (pure-Python overlaps): {report['oracle_s']:.1f} s; "
        f"max |dAP| = {report['oracle_max_abs_diff']:.2e}\n"
    )


def main() -> int:
    args = parse_args()
    if args.predict:
        return bench_predict(args)

    gt = read_wider_gt(args.gt)
    with contextlib.ExitStack() as stack:
        pred_dir = Path(args.pred) if args.pred else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        if not any(pred_dir.glob("*/*.txt")):
            t0 = time.perf_counter()
            n = make_predictions(gt, pred_dir, args.per_image)
            sys.stdout.write(f"wrote {n} predictions for {gt.num_images} images in {time.perf_counter() - t0:.1f} s\n")
        report, times = bench_ours(pred_dir, gt, args.gt, args.repeat)
        write_ours(report, times)
        if not args.no_reference:
            bench_reference(pred_dir, args.gt, report)
        if args.oracle:
            bench_oracle(pred_dir, args.gt, report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
