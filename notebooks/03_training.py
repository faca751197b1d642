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
# # 03 · Training
#
# Trains RetinaFace with `nbsrc.engine.fit`: a latent preset on JPEG AI latents (or an RGB preset on
# images), with the published matching and MultiBox loss, warm-up and the preset's schedule, mixed precision
# on GPU and a checkpoint every epoch. The curves (loss parts, positive anchors per image, learning rate,
# validation AP) are redrawn from the run's `metrics.jsonl` while it trains. W&B logs the run when `wandb` is
# `online` (on Kaggle with the `WANDB_API_KEY` secret attached) or `offline`. Afterwards: detections on
# validation images and the checkpoint path, recorded in the run folder for the evaluation notebook.

# %%
import os
import sys
from glob import glob

sys.path[:0] = [p[:-6] for d in ("*", "*/*", "*/*/*", "*/*/*/*") for p in glob(f"{os.environ.get('NBSRC_KAGGLE_INPUT') or '/kaggle/input'}/{d}/nbsrc")][:1]

# %%
from typing import Optional  # parameters' annotations: papermill reads Optional[str], not str | None

from IPython.display import display

from nbsrc import launch, notebook_config, paths, viz
from nbsrc.data.loaders import build_dataset
from nbsrc.detector import Detector
from nbsrc.runs import resolve_run_folder
from nbsrc.utils import read_jsonl, setup_logging

setup_logging()

# %% tags=["parameters"]
dataset_root: Optional[str] = None  # dataset with train/ and val/ (None: the demo data; on Kaggle the attached one)
images_root: Optional[str] = None  # WIDER FACE images (WIDER_<split>/images/...) for the original sizes (None: found among the inputs)
sizes_csv: Optional[str] = None  # CSV name,width,height of the original images
label_frame: Optional[int] = None  # 640 if the labels are already in the latents' 640 frame
preset: str = "latent-r18"  # model preset: latent-mnet/r18/r34/r50 for latents; mnet-biubug6, r18-p2p6, ... for RGB
epochs: int = 20  # training epochs
batch_size: int = 8  # images per optimizer step (per GPU)
lr: float = 0.001  # peak learning rate (after warm-up)
latent_suffix: str = "latent_75.npy"  # JPEG AI rate point of the latents: latent_12 / 25 / 50 / 75 / 100
all_rates: bool = False  # every image contributes one sample per available rate
num_workers: int = 2  # DataLoader worker processes
device: str = "auto"  # auto | cpu | cuda | cuda:N
gpus: int = 0  # GPUs to train on with DDP (0: every visible one, both on Kaggle T4 x2; 1: one)
amp: str = "auto"  # mixed precision: auto | fp16 | bf16 | off
pretrained: str = "auto"  # ImageNet backbone: auto (when found; on Kaggle also in attached datasets) | none | a path
freeze_backbone: bool = False  # freeze the backbone (latent presets: the kept ImageNet part; the bridge trains)
weight: Optional[str] = None  # initialise the model from this checkpoint
max_images: Optional[int] = None  # use only the first N images of each split
max_steps_per_epoch: Optional[int] = None  # cap the optimizer steps per epoch
wandb: str = "disabled"  # Weights & Biases: online | offline | disabled
run_name: Optional[str] = None  # training run folder under <run_dir>/train (None: preset and timestamp)
resume: Optional[str] = None  # continue a stopped run: its last.pth, or auto (on Kaggle: this kernel's output attached)
keep_epochs: Optional[int] = 3  # epoch_XXX.pth files kept, the newest (None: all); last/best/final always stay
gallery: int = 6  # validation images shown with their detections (2 when smoke)
conf_thresh: float = 0.5  # score threshold of the shown detections
smoke: bool = False  # seconds-long run: a narrow model, 1 epoch of 2 steps on 4 images
run_dir: Optional[str] = None  # run folder for the training run, plots and metrics (None: runs/notebooks)
overrides: str = ""  # further config settings: space-separated key-equals-value pairs, as on the train command line

# %%
cfg = notebook_config(globals())  # the parameters checked (as the runner does) and made the training config
run = paths.run_folder(run_dir)
plots = run / "plots" / "03_training"
if smoke:
    cfg = cfg.replace(
        epochs=1, max_steps_per_epoch=2, max_images=4, num_workers=0, out_channels=16, **{"train.batch_size": 2}
    )

# %%
cfg, train_dir = resolve_run_folder(cfg)  # a resumed run keeps its name
processes = launch.training_processes(cfg.train.device, gpus)
display(viz.config_table(cfg))

# %% [markdown]
# ## Train
# The figure below is redrawn from `metrics.jsonl` every few seconds while the run trains. With several GPUs the
# run is a `torchrun` child (one process per GPU, DistributedDataParallel) whose log streams into this cell.

# %%
metrics_file = train_dir / "metrics.jsonl"
with viz.TrainingMonitor(metrics_file, every=10, save=plots / "training_live.png"):
    train_dir = launch.train(cfg, processes)
checkpoint = train_dir / "best.pth" if (train_dir / "best.pth").is_file() else train_dir / "weight_final.pth"
paths.save_artifact(run, "checkpoint", checkpoint)
print(f"run folder: {train_dir}\ncheckpoint: {checkpoint}")

# %% [markdown]
# ## Curves of the whole run

# %%
records = read_jsonl(metrics_file)
fig = viz.plot_training_curves(records, save=plots / "training_curves.png")
epochs_done = [r for r in records if r.get("kind") == "epoch"]
display(viz.Table(viz.epoch_rows(epochs_done), "per epoch"))

# %% [markdown]
# ## Detections on validation images
# Green: detections matching a face (IoU ≥ 0.5); red: detections matching none; dashed yellow: missed faces.

# %%
detector = Detector.from_checkpoint(checkpoint, device=device)
val_cfg = detector.cfg.replace(dataset_root=cfg.data.dataset_root, max_images=max_images)
val_set = build_dataset(val_cfg, val_cfg.data.val_split, train=False)
samples = [val_set[i] for i in range(min(2 if smoke else gallery, len(val_set)))]
items = viz.detection_items(detector, samples, conf=conf_thresh)
fig = viz.detection_gallery(items, save=plots / "val_detections.png")

# %%
last = epochs_done[-1] if epochs_done else {}
metrics = {
    "checkpoint": str(checkpoint),
    "epochs": len(epochs_done),
    "train_loss": last.get("train_loss"),
    "val_loss": last.get("val_loss"),
    "val_ap": last.get("val_ap"),
}
paths.save_metrics(run, "03_training", metrics)
display(viz.Table(metrics, "key numbers"))
