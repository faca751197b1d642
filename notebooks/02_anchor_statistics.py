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
# # 02 · Anchor statistics
#
# Do a preset's anchors fit the faces it has to find? Faces are measured in the **network frame** (the
# 640×640 image a latent describes): by default the real WIDER FACE val faces (`faces="wider"`: the ground truth
# `gt_dir`, else one found among the inputs, else the official files shipped with nbsrc; original sizes from the
# WIDER FACE images when found, else WIDER's 1024 px width), or the dataset's own labels mapped into the frame
# (`faces="dataset"`). For every face the best IoU with
# any anchor is computed exactly; a face whose best IoU stays below the forced-match threshold (0.2) can never
# become a positive, and one below 0.35 only through forced matching. k-means on face shapes (IoU distance)
# suggests alternative anchors, placed on the preset's levels and scored on the same grid.

# %%
import os
import sys
from glob import glob

sys.path[:0] = [p[:-6] for d in ("*", "*/*", "*/*/*", "*/*/*/*") for p in glob(f"{os.environ.get('NBSRC_KAGGLE_INPUT') or '/kaggle/input'}/{d}/nbsrc")][:1]

# %%
from typing import Optional  # parameters' annotations: papermill reads Optional[str], not str | None

from IPython.display import display

from nbsrc import anchor_stats, face_stats, notebook_config, paths, viz
from nbsrc.utils import setup_logging

setup_logging()

# %% tags=["parameters"]
dataset_root: Optional[str] = None  # dataset with train/ and val/ (None: the demo data; on Kaggle the attached one)
images_root: Optional[str] = None  # WIDER FACE images (WIDER_<split>/images/...) for the original sizes (None: found among the inputs)
sizes_csv: Optional[str] = None  # CSV name,width,height of the original images
label_frame: Optional[int] = None  # 640 if the labels are already in the latents' 640 frame
faces: str = "wider"  # wider: the WIDER FACE val faces | dataset: the labels of the dataset's split
gt_dir: Optional[str] = None  # folder of the WIDER val .mat files (None: found among the inputs, else the shipped official)
split: str = "val"  # dataset split whose labels are used with faces: dataset
preset: str = "latent-r50"  # preset whose anchors are analysed
compare: str = "mnet-biubug6,mnet-2cls,latent-r50"  # presets to compare (in this frame), comma-separated
kmeans_k: str = "3,6,9"  # numbers of k-means anchor shapes to try, comma-separated
smoke: bool = False  # seconds-long run on a few images
run_dir: Optional[str] = None  # run folder for plots and metrics (None: runs/notebooks)

# %%
cfg = notebook_config(globals())  # the parameters checked (as the runner does) and made the config
run = paths.run_folder(run_dir)
plots = run / "plots" / "02_anchor_statistics"
loaded = face_stats.load_faces(cfg, faces=faces, split=split, max_images=40 if smoke else None)
boxes = loaded["boxes"]
print(f"{len(boxes):,} faces from {loaded['images']:,} images of {loaded['source']}")
print(f"network frame: {cfg.data.image_size} px, {cfg.data.resize_policy}")

# %% [markdown]
# ## Face sizes in the network frame
# Width, height and aspect ratio (w/h) of every face after mapping into the frame the detector sees.

# %%
hist = face_stats.size_histograms(boxes)
fig = viz.plot_size_histograms(hist, title=loaded["source"], save=plots / "face_sizes.png")
display(viz.Table(face_stats.size_percentiles(hist), "percentiles (px; aspect = w/h)"))

# %% [markdown]
# ## Anchors per level of the preset

# %%
layout = anchor_stats.anchor_layout(cfg)
display(viz.Table(anchor_stats.anchor_table(layout), f"{layout.name} at {layout.image_size[1]}x{layout.image_size[0]}"))
fig = viz.plot_anchor_shapes(boxes[:, 2:] - boxes[:, :2], layout, save=plots / "anchor_shapes.png")

# %% [markdown]
# ## Best-anchor IoU per face and recall by face size
# "recall@t": the share of faces whose best anchor reaches IoU t (0.35 is the positive threshold of the
# published matching, 0.5 the evaluation's). "unmatched": faces whose best IoU is below 0.2, which matching
# never assigns to any anchor.

# %%
best = anchor_stats.best_anchor_iou(boxes, layout)
by_size = anchor_stats.recall_by_size(boxes, best["iou"], force_iou=cfg.loss.force_iou)
display(viz.Table(by_size, f"{layout.name}: best-anchor IoU by face size sqrt(w*h)"))
fig = viz.plot_recall_by_size({layout.name: by_size}, save=plots / "recall_by_size.png")

# %% [markdown]
# ## Faces no anchor can match

# %%
display(viz.Table(anchor_stats.unmatched_summary(boxes, best["iou"], cfg.loss.force_iou), "faces below the forced-match IoU"))
fig = viz.plot_anchor_shapes(
    boxes[:, 2:] - boxes[:, :2],
    layout,
    highlight=best["iou"] < cfg.loss.force_iou,
    highlight_label="unmatched",
    save=plots / "unmatched.png",
)

# %% [markdown]
# ## Presets compared on the same faces

# %%
presets = [p.strip() for p in compare.split(",") if p.strip()]
comparison, best_by_preset = anchor_stats.compare_presets(
    presets, boxes, image_size=cfg.data.image_size, force_iou=cfg.loss.force_iou
)
display(viz.Table(comparison, "anchor coverage per preset"))
fig = viz.plot_best_iou(best_by_preset, save=plots / "best_iou_presets.png")

# %% [markdown]
# ## k-means anchor suggestions
# Shapes from k-means with distance 1 − IoU (boxes compared at a common centre). "shape" columns score the
# shapes alone; "grid" columns place them on the preset's levels (by size/stride) and score the real grid.

# %%
ks = [int(k) for k in kmeans_k.split(",") if k.strip()]
suggestions = anchor_stats.suggest_anchors(boxes, layout, ks=ks)
display(viz.Table(suggestions, "anchor shapes: preset vs k-means"))

# %%
overall = by_size[-1]
metrics = {
    "faces": len(boxes),
    "preset": layout.name,
    "recall@0.35": overall["recall@0.35"],
    "recall@0.5": overall["recall@0.5"],
    "unmatched": overall["unmatched"],
    "mean_best_iou": overall["mean best IoU"],
}
paths.save_metrics(run, "02_anchor_statistics", metrics)
display(viz.Table(metrics, f"key numbers (saved to {run / 'metrics'})"))
