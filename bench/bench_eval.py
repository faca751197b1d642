"""Benchmark: WIDER FACE evaluation of the full val set, ours vs the line-by-line reference oracle.

Builds a deterministic prediction folder from the real val ground truth (``--per-image`` predictions per image:
jittered true faces, small faces missed, duplicates and random false positives), then times

- ``evaluate(pred_dir, gt_dir)`` end to end (read the four ``.mat`` files and 3,226 result files, evaluate),
- the evaluation with the ground truth already read,
- the reference oracle (``tests/wider_oracle.py``, once),

and reports the peak memory of our evaluation (tracemalloc, which NumPy reports to) and the process peak RSS.

    python bench/bench_eval.py [--gt ../shared/data/widerface_val_gt] [--per-image 100] [--repeat 5] [--no-oracle]

With ``--predict PRESET ...`` it instead times dataset-wide prediction (`nbsrc.evaluation.predict`): forward and
post-processing (decode + NMS) in ms per image and the post-processing share, per preset, on a demo dataset
(``--dataset_root`` for another one; untrained weights unless ``--weight``; GPU when present):

    python bench/bench_eval.py --predict latent-r18 mnet-biubug6 [--images 24] [--batch-size 8] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import resource
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
from nbsrc.evaluation.results import write_wider_results  # noqa: E402
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gt", default=str(ROOT.parent / "shared" / "data" / "widerface_val_gt"))
    parser.add_argument("--per-image", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-oracle", action="store_true")
    parser.add_argument("--pred", default=None, help="reuse / keep the prediction folder here")
    parser.add_argument("--json", default=None, help="write the numbers as JSON")
    parser.add_argument("--predict", nargs="+", default=None, metavar="PRESET", help="time prediction instead")
    parser.add_argument("--dataset_root", default=None, help="--predict: dataset (default: a demo dataset)")
    parser.add_argument("--weight", default=None, help="--predict: checkpoint (default: untrained weights)")
    parser.add_argument("--images", type=int, default=24, help="--predict: demo images per split")
    parser.add_argument("--batch-size", type=int, default=8, help="--predict: images per forward pass")
    parser.add_argument("--device", default="auto", help="--predict: auto | cpu | cuda")
    args = parser.parse_args()
    if args.predict:
        return bench_predict(args)

    gt = read_wider_gt(args.gt)
    tmp = None
    if args.pred:
        pred_dir = Path(args.pred)
    else:
        tmp = tempfile.TemporaryDirectory()
        pred_dir = Path(tmp.name)
    if not any(pred_dir.glob("*/*.txt")):
        t0 = time.perf_counter()
        n = make_predictions(gt, pred_dir, args.per_image)
        sys.stdout.write(f"wrote {n} predictions for {gt.num_images} images in {time.perf_counter() - t0:.1f} s\n")

    evaluate(pred_dir, gt)  # warm-up (imports, allocator)
    end_to_end, preloaded = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        ours = evaluate(pred_dir, args.gt)
        end_to_end.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        evaluate(pred_dir, gt)
        preloaded.append(time.perf_counter() - t0)
    tracemalloc.start()
    evaluate(pred_dir, args.gt)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    report = {
        "images": gt.num_images,
        "predictions": evaluate_curves(pred_dir, gt).num_predictions,
        "ap": ours,
        "ours_end_to_end_s": float(np.median(end_to_end)),
        "ours_gt_preloaded_s": float(np.median(preloaded)),
        "peak_memory_mb": peak / 2**20,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # process so far (Linux: KiB)
    }
    sys.stdout.write(
        f"{report['predictions']} predictions on {gt.num_images} images\n"
        f"ours, end to end (read .mat + {gt.num_images} files + evaluate): median {report['ours_end_to_end_s']:.3f} s "
        f"(min {min(end_to_end):.3f})\n"
        f"ours, ground truth already read: median {report['ours_gt_preloaded_s']:.3f} s (min {min(preloaded):.3f})\n"
        f"peak memory of one evaluation (tracemalloc, NumPy included): {report['peak_memory_mb']:.1f} MiB; "
        f"peak RSS of the process so far: {report['peak_rss_mb']:.0f} MiB\n"
        f"AP ours: {json.dumps(ours)}\n"
    )
    if not args.no_oracle:
        import wider_oracle

        t0 = time.perf_counter()
        oracle = wider_oracle.evaluation(str(pred_dir), args.gt)
        report["oracle_s"] = time.perf_counter() - t0
        report["oracle_ap"] = oracle
        report["speedup"] = report["oracle_s"] / report["ours_end_to_end_s"]
        report["max_abs_diff"] = max(abs(oracle[s] - ours[s]) for s in ours)
        sys.stdout.write(
            f"oracle: {report['oracle_s']:.1f} s -> speed-up {report['speedup']:.0f}x; "
            f"max |dAP| = {report['max_abs_diff']:.2e}\n"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
