# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · WIDER FACE evaluation
#
# Predicts the validation split with a checkpoint (by default the one the training notebook recorded in the
# run folder), writes WIDER result files in original-image pixels, and evaluates them with the official WIDER
# FACE protocol: Easy / Medium / Hard AP and precision-recall curves. The ground truth is `gt_dir` when given,
# else the dataset's `<split>/ground_truth`, else a WIDER FACE `eval_tools/ground_truth` found among the inputs
# or beside the dataset, else the official val files shipped with nbsrc. A split holding only part of the
# ground truth's images is evaluated on those images, and the table says so. For latent models, the same model is
# evaluated at every JPEG AI rate present (AP against bits per pixel, optionally next to an RGB model on the
# same images); for face + person models, the 2-class table. A gallery marks true positives, misses and
# false positives on validation images.

# %%
import os
import sys
from glob import glob

sys.path[:0] = [p[:-6] for d in ("*", "*/*", "*/*/*", "*/*/*/*") for p in glob(f"{os.environ.get('NBSRC_KAGGLE_INPUT') or '/kaggle/input'}/{d}/nbsrc")][:1]

# %%
from pathlib import Path
from typing import Optional  # parameters' annotations: papermill reads Optional[str], not str | None

from IPython.display import display

from nbsrc import paths, viz
from nbsrc.data.demo import resolve_dataset_root
from nbsrc.data.loaders import build_dataset
from nbsrc.evaluation import ground_truth, predict, rates, twoclass, widerface
from nbsrc.notebook import notebook_detector
from nbsrc.utils import setup_logging

setup_logging()

# %% tags=["parameters"]
dataset_root: Optional[str] = None  # dataset with train/ and val/ (None: the demo data; on Kaggle the attached one)
images_root: Optional[str] = None  # WIDER FACE images (WIDER_<split>/images/...) for the original sizes (None: found among the inputs)
sizes_csv: Optional[str] = None  # CSV name,width,height of the original images
label_frame: Optional[int] = None  # 640 if the labels are already in the latents' 640 frame
checkpoint: Optional[str] = None  # checkpoint to evaluate (None: the training notebook's, from run_dir or Kaggle input)
preset: Optional[str] = None  # preset of a published state dict that carries no config (None: inferred)
split: str = "val"  # split to predict and evaluate
gt_dir: Optional[str] = None  # folder of the WIDER val .mat files (None: the dataset's, found, or the shipped official)
latent_suffix: str = "latent_75.npy"  # rate of the main evaluation (latent models)
all_rates: bool = True  # latent models: AP at every rate present, as a table and a plot
rgb_checkpoint: Optional[str] = None  # an RGB model evaluated on the same images, next to the rates
twoclass_labels: Optional[str] = None  # 2-class labels (None: <dataset>/<split>/labels_2cls.txt for face+person models)
conf_thresh: float = 0.02  # score threshold of the written predictions (the published WIDER setting)
nms_thresh: float = 0.4  # NMS IoU threshold
test_scale: str = "square"  # RGB input: square (data.image_size) | original (own size) | mxnet (short side 1600)
device: str = "auto"  # auto | cpu | cuda | cuda:N
gallery: int = 6  # validation images in the gallery (2 when smoke)
gallery_conf: float = 0.5  # score threshold of the detections drawn in the gallery
smoke: bool = False  # seconds-long run on 4 images (evaluated as a subset of the ground truth)
run_dir: Optional[str] = None  # run folder with the training notebook's checkpoint; receives predictions and plots

# %%
detector, weights = notebook_detector(globals())  # the parameters checked (as the runner does); the checkpoint's model
detector.cfg = detector.cfg.replace(max_images=4 if smoke else None)
run = paths.run_folder(run_dir)
plots, out = run / "plots" / "04_widerface_evaluation", run / "predictions"
root = resolve_dataset_root(dataset_root, smoke=smoke)
latent = detector.input_kind == "latent"
gt = ground_truth.resolve_gt_dir(detector.cfg.eval.gt_dir, root, split)
print(f"checkpoint: {weights} ({detector.cfg.preset}, {detector.input_kind})\n{gt}")

# %% [markdown]
# ## Predict
# One result file per image, boxes mapped back from the network frame to original-image pixels.

# %%
pred_dir = out / (Path(latent_suffix).stem if latent else "rgb")
kwargs = {"conf": conf_thresh, "nms": nms_thresh, "batch_size": detector.cfg.eval.batch_size, "progress": not smoke}
runs = predict.predict_split(
    detector, root, pred_dir, split=split, latent_suffix=latent_suffix if latent else None, **kwargs
)
print(runs[""].summary())

# %% [markdown]
# ## WIDER FACE Easy / Medium / Hard

# %%
result = widerface.evaluate_curves(pred_dir, gt.folder, images=runs[""].names)  # the split's images
rows = [{"setting": s, "AP": result.ap[s], "faces": result.num_faces[s]} for s in ("easy", "medium", "hard")]
display(viz.Table(rows, f"WIDER FACE {split}: {result.coverage}"))
print(widerface.format_table(result), end="")
curves = {s: (result.precision[s], result.recall[s]) for s in ("easy", "medium", "hard")}
fig = viz.plot_pr_curves(curves, result.ap, save=plots / "pr_curves.png")

# %% [markdown]
# ## AP per JPEG AI rate
# The latent model at every rate present (bits per pixel = suffix / 100); an RGB model as dashed lines.

# %%
rgb = paths.resolve_optional_path(rgb_checkpoint, "rgb_checkpoint")
table = None
if latent and all_rates:
    table = rates.evaluate_rates(
        detector, root, out, split=split, gt_dir=gt, rgb_weight=rgb, plot=False, **kwargs
    )
    display(viz.Table(table.to_dict(), f"WIDER AP per rate ({table.coverage})"))
    fig = viz.plot_ap_vs_rate(table.to_dict(), save=plots / "ap_vs_bpp.png")
else:
    print("per-rate table: needs a latent model and all_rates=True")

# %% [markdown]
# ## Face + person (2-class models)

# %%
labels_2cls = paths.resolve_optional_path(twoclass_labels, "twoclass_labels") or root / split / "labels_2cls.txt"
missing = "empty" if smoke else "error"  # the 2-class labels list every image of the split
two = None
if detector.cfg.model.num_classes > 2 and labels_2cls.is_file():
    sizes = root / "image_sizes.csv" if (root / "image_sizes.csv").is_file() else None
    two = twoclass.evaluate_twoclass(pred_dir, labels_2cls, coords="pixels", image_sizes=sizes, missing=missing)
    print(twoclass.format_twoclass_table(two))
else:
    print(f"2-class table: not applicable ({detector.cfg.model.num_classes - 1} class model)")

# %% [markdown]
# ## Detections on validation images
# Green: true positives (IoU ≥ 0.5); red: false positives; dashed yellow: missed faces.

# %%
val_set = build_dataset(detector.cfg.replace(dataset_root=str(root), latent_suffix=latent_suffix), split, train=False)
shown = 2 if smoke else gallery
samples = [val_set[i] for i in range(0, len(val_set), max(1, len(val_set) // shown))][:shown]
fig = viz.detection_gallery(viz.detection_items(detector, samples, conf=gallery_conf), save=plots / "gallery.png")

# %%
metrics = {"checkpoint": str(weights), **{s: result.ap[s] for s in ("easy", "medium", "hard")}}
metrics.update(images=result.images_evaluated, images_in_gt=result.images_in_gt, ground_truth=gt.kind)
if table is not None:
    metrics["rates"] = [{k: r[k] for k in ("model", "bpp", "easy", "medium", "hard")} for r in table.to_dict()]
if two is not None:
    metrics["2cls_mAP@0.5"] = two.map[0.5]
paths.save_metrics(run, "04_widerface_evaluation", metrics)
display(viz.Table({k: v for k, v in metrics.items() if k != "rates"}, "key numbers"))
