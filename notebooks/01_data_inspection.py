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
# # 01 · Data inspection
#
# What is in the dataset, and do boxes and latents line up? Per split: images, faces, face sizes in the
# network frame and the latent rates present; the validation report (every defect with file and line); the
# label-frame check (are the labels in original-image pixels or already in the 640 frame?); per-rate latent
# statistics; and a gallery of samples with the ground truth drawn over each latent's energy map (RMS over
# channels) and over the original image when the split has one. Boxes that do not sit on the faces' energy
# mean the label frame is wrong.

# %%
import os
import sys
from glob import glob

sys.path[:0] = [p[:-6] for d in ("*", "*/*", "*/*/*", "*/*/*/*") for p in glob(f"{os.environ.get('NBSRC_KAGGLE_INPUT') or '/kaggle/input'}/{d}/nbsrc")][:1]

# %%
from pathlib import Path
from typing import Optional  # parameters' annotations: papermill reads Optional[str], not str | None

from IPython.display import display

from nbsrc import face_stats, latent_stats, notebook_config, paths, viz
from nbsrc.data.loaders import build_dataset
from nbsrc.data.validate import validate_dataset, validation_settings
from nbsrc.utils import setup_logging

setup_logging()

# %% tags=["parameters"]
dataset_root: Optional[str] = None  # dataset with train/ and val/ (None: the demo data; on Kaggle the attached one)
images_root: Optional[str] = None  # WIDER FACE images (WIDER_<split>/images/...) for the original sizes (None: found among the inputs)
sizes_csv: Optional[str] = None  # CSV name,width,height of the original images
label_frame: Optional[int] = None  # 640 if the labels are already in the latents' 640 frame
splits: str = "train,val"  # splits to inspect, comma-separated
preset: str = "latent-r50"  # preset giving the network frame, resize policy and latent settings
latent_suffix: str = "latent_75.npy"  # rate shown in the gallery and checked by the validation
gallery_split: str = "val"  # split the gallery samples come from
samples: int = 6  # samples in the gallery
stats_latents: int = 32  # latents per rate read for the statistics
check_values: bool = True  # every latent read once for NaN/Inf (cached; False: headers only on huge datasets)
smoke: bool = False  # seconds-long run on a few images
run_dir: Optional[str] = None  # run folder for plots and metrics (None: runs/notebooks)

# %%
cfg = notebook_config(globals())  # the parameters checked (as the runner does) and made the config
values = "all" if check_values and not smoke else "none"
cfg = cfg.replace(on_error="skip", check_values=values)  # every bad sample reported, none raised
run = paths.run_folder(run_dir)
plots = run / "plots" / "01_data_inspection"
root = Path(cfg.data.dataset_root)
split_names = [s.strip() for s in splits.split(",") if s.strip()]
print(
    f"dataset: {root}\nsplits: {split_names}, network frame {cfg.data.image_size} px, policy {cfg.data.resize_policy}"
)

# %% [markdown]
# ## Validation report
# Every defect by kind: missing or unreadable latents, wrong shape or dtype, NaN/Inf, boxes outside the frame,
# degenerate boxes, duplicated names, unparseable label lines, labels whose frame cannot be determined.

# %%
report = validate_dataset(root, split_names, **validation_settings(cfg), check_values=values == "all")
display(
    viz.Table(
        [{"defect": k, "count": n} for k, n in sorted(report.counts().items())] or [{"defect": "none", "count": 0}]
    )
)
print(report.to_text(max_per_kind=5))

# %% [markdown]
# ## Label-frame check
# Which frame the labels appear to be in, from box extents against the original sizes and the network frame.

# %%
frame_keys = ("split", "verdict", "images", "boxes", "images_with_size", "inside_original", "inside_network", "message")
display(viz.Table([{k: r.as_dict()[k] for k in frame_keys} for r in report.frames.values()], "label frame per split"))

# %% [markdown]
# ## Summary per split and rate
# Face sizes are sqrt(w·h) in the network frame; `latent_NN` columns count the images having that rate.

# %%
faces = {s: face_stats.load_faces(cfg, dataset_root=root, split=s, max_images=16 if smoke else None) for s in split_names}
rates = {s: latent_stats.rate_counts(root / s) for s in split_names}
summary = face_stats.dataset_summary({s: f["per_image"] for s, f in faces.items()}, rates)
display(viz.Table(summary, "dataset summary"))

# %% [markdown]
# ## Latent statistics per rate
# Per-channel mean and standard deviation (channels sorted by std) and the value histogram of each rate.

# %%
by_rate = latent_stats.latent_statistics_by_rate(root / gallery_split, max_files=4 if smoke else stats_latents)
display(viz.Table(latent_stats.latent_statistics_rows(by_rate), f"latents of {gallery_split}"))
fig = viz.plot_latent_statistics({f"latent_{r}": v for r, v in by_rate.items()}, save=plots / "latent_stats.png")

# %% [markdown]
# ## Samples with their ground truth
# Left: the latent's energy map stretched over the network frame; right: the original image. Boxes in green,
# landmarks coloured (left eye, right eye, nose, mouth left, mouth right).

# %%
dataset = build_dataset(cfg, gallery_split, train=False)
picks = [int(i) for i in range(0, len(dataset), max(1, len(dataset) // samples))][:samples]
fig = viz.sample_gallery(viz.gallery_samples(dataset, picks, cfg), ncols=4, save=plots / "samples.png")

# %%
metrics = {f"{s}_images": len(f["per_image"]) for s, f in faces.items()}
metrics.update({f"{s}_faces": len(f["boxes"]) for s, f in faces.items()})
metrics.update(defects=len(report.errors), frames={s: r.verdict for s, r in report.frames.items()})
paths.save_metrics(run, "01_data_inspection", metrics)
display(viz.Table({k: v for k, v in metrics.items() if k != "frames"}, "key numbers"))
