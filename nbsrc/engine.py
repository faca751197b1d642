"""The training loop as plain functions: `fit` runs a whole training from a `Config`; `train_one_epoch`,
`evaluate_loss`, `evaluate_ap` and `evaluate` are its parts, usable on their own.

A run folder ``<train.out>/<run_name>/`` holds:

- ``config.json``: the full configuration;
- ``metrics.jsonl``: one line per logged step (``kind="step"``: loss parts, lr, positive anchors per image,
  images/s, GPU memory) and per epoch (``kind="epoch"``: train averages, validation loss and AP);
- ``epoch_XXX.pth`` after every epoch (only the newest ``train.keep_epochs`` when set), ``last.pth`` (the
  same), ``best.pth`` (best validation AP when the validation split exists, else best training loss),
  ``weight_final.pth`` (weights of the last epoch).

A run claims its folder for its whole life (``run.lock``, see `nbsrc.runs`): a second run into a folder in use,
or a resume while the run still goes on, is refused, naming the holder; a new run's default name is taken with
``mkdir``, so two runs started in the same second get two folders.

Every file is written atomically, so killing a run loses at most the current epoch, and ``train.resume``
restores model, optimizer, GradScaler, scheduler, epoch, step, the RNG states (torch, CUDA, NumPy, Python) and
the data order (a function of seed and epoch): a resumed run gives the same weights as an uninterrupted one.
An epoch ends with its checkpoint, its metrics line, ``last.pth`` (the point a resume continues from: metrics
written after it are dropped and the epoch is trained again), then ``best.pth`` (which a resume completes when a
kill came first), so a kill at any point of it loses neither the best model nor a metrics line.
Under ``torchrun`` the model is wrapped in DistributedDataParallel and only rank 0 claims the folder, writes files
and logs.
"""

from __future__ import annotations

import filecmp
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from nbsrc.checkpoint import check_resumable, load_checkpoint, load_state_dict_strict, save_checkpoint, unwrap_model
from nbsrc.config import Config
from nbsrc.distributed import DistInfo, any_rank, barrier, broadcast_object, init_distributed
from nbsrc.evaluation.detection_ap import detection_ap
from nbsrc.loss import build_loss, normalize_targets
from nbsrc.optim import build_optimizer, build_scheduler
from nbsrc.postprocess import postprocess
from nbsrc.runs import RunClaim, RunFolderBusy, claim
from nbsrc.tracking import Tracker, build_tracker
from nbsrc.utils import (
    append_jsonl,
    atomic_path,
    atomic_write_text,
    read_jsonl,
    seed_everything,
    select_device,
    tqdm_kwargs,
)

__all__ = [
    "claim_run_folder",
    "evaluate",
    "evaluate_ap",
    "evaluate_loss",
    "fit",
    "get_rng_state",
    "load_start_weights",
    "make_run_name",
    "preview_image",
    "resolve_amp",
    "resolve_dataset_root_config",
    "set_rng_state",
    "train_one_epoch",
]

logger = logging.getLogger(__name__)

LOSS_KEYS = ("loss", "loss_box", "loss_cls", "loss_landm")
CLASS_NAMES = {1: "face", 2: "person"}
LOG_EVERY = 10  # optimizer steps between metrics.jsonl step records
PREVIEW_IMAGES = 4  # validation images logged with their detections to W&B


# ---- small helpers ------------------------------------------------------------------------------
def make_run_name(cfg: Config) -> str:
    """Default run folder name: ``<preset>-<YYYYmmdd-HHMMSS>``."""
    return f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``train.amp`` on `device` (None = full float32).

    ``auto`` is bf16 on CUDA GPUs with native bf16 (compute capability >= 8: A100, L4, H100), fp16 otherwise
    (T4, P100: used with a GradScaler), and off on the CPU. ``bf16`` on a GPU without it falls back to fp16.
    """
    if amp not in ("auto", "fp16", "bf16", "off"):
        raise ValueError(f"amp must be auto | fp16 | bf16 | off, got {amp!r}")
    if amp == "off":
        return None
    if device.type != "cuda":
        if amp == "bf16":
            return torch.bfloat16
        if amp == "fp16":
            logger.warning("amp=fp16 needs CUDA; training in float32 on %s", device)
        return None
    native_bf16 = torch.cuda.get_device_capability(device)[0] >= 8
    if amp == "fp16" or (amp == "auto" and not native_bf16):
        return torch.float16
    if not native_bf16:
        logger.warning("amp=bf16: %s has no native bf16; using fp16 with a GradScaler", torch.cuda.get_device_name())
        return torch.float16
    return torch.bfloat16


def _move_batch(batch: Mapping[str, Any], device: torch.device, channels_last: bool) -> dict[str, Any]:
    moved = dict(batch)
    inputs = batch["inputs"].to(device, non_blocking=True)
    if channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    moved["inputs"] = inputs
    for key in ("boxes", "labels", "landmarks", "landmarks_valid", "num_boxes"):
        if key in batch:
            moved[key] = batch[key].to(device, non_blocking=True)
    return moved


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def _gpu_memory_mib(device: torch.device) -> float:
    if device.type != "cuda":
        return 0.0
    value = torch.cuda.max_memory_allocated(device) / 2**20
    torch.cuda.reset_peak_memory_stats(device)
    return round(value, 1)


def get_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch and CUDA RNG states, in types that load with ``torch.load(weights_only=True)``."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what `get_rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys.numpy(), dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = list(state["cuda"])[: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda_states)


def _loss_summary(parts: Mapping[str, Tensor]) -> dict[str, float]:
    summary = {k: float(parts[k].detach()) for k in LOSS_KEYS if k in parts}
    if "num_pos" in parts:
        summary["num_pos"] = [int(v) for v in parts["num_pos"].detach().cpu()]
    return summary


# ---- one epoch ------------------------------------------------------------------------------------
def train_one_epoch(
    model: nn.Module,
    loss_fn: nn.Module,
    loader: Iterable[Mapping[str, Any]],
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device,
    epoch: int = 0,
    epochs: int | None = None,
    scheduler: Any = None,
    scaler: torch.amp.GradScaler | None = None,
    amp_dtype: torch.dtype | None = None,
    grad_clip: float = 0.0,
    channels_last: bool = False,
    max_steps: int | None = None,
    start_step: int = 0,
    log_every: int = LOG_EVERY,
    log_fn: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Train for one pass over `loader` (at most `max_steps` batches).

    Args:
        model: the network (possibly DDP / compiled); outputs ``loc``, ``conf``, ``landm`` (see `RetinaFace`).
        loss_fn: `nbsrc.loss.MultiBoxLoss`-like: ``loss_fn(outputs, anchors, targets)`` -> dict of parts.
        loader: collated batches (see `nbsrc.data.collate.detection_collate`).
        optimizer: the optimizer; `scheduler` (if any) is stepped after every optimizer step.
        device: training device.
        epoch: index of this epoch (0-based, for logs); `epochs` the total (for the progress bar).
        scaler: GradScaler for fp16 autocast (None or disabled otherwise).
        amp_dtype: autocast dtype, or None for float32 (see `resolve_amp`).
        grad_clip: maximum global gradient norm (0 = no clipping).
        channels_last: feed inputs in channels_last memory format.
        max_steps: stop after this many batches.
        start_step: global step before this epoch (step records count from it).
        log_every: steps between records passed to `log_fn`.
        log_fn: receives a ``kind="step"`` record (averages since the previous record) every `log_every` steps
            and after the last step.
        progress: show a tqdm bar (throttled outside terminals, see `nbsrc.utils.tqdm_kwargs`).

    Returns:
        Averages over the epoch: ``loss``, ``loss_box``, ``loss_cls``, ``loss_landm``, ``pos_per_image``,
        plus ``steps``, ``images`` and ``images_per_s``.

    Raises:
        FloatingPointError: a non-finite loss, naming the batch's images and the loss parts.
    """
    base = unwrap_model(model)
    model.train()
    total_steps = len(loader) if hasattr(loader, "__len__") else None
    if max_steps is not None:
        total_steps = min(total_steps, max_steps) if total_steps is not None else max_steps
    params = [p for p in model.parameters() if p.requires_grad]
    sums = dict.fromkeys((*LOSS_KEYS, "pos_per_image"), 0.0)
    window = dict.fromkeys((*LOSS_KEYS, "pos_per_image"), 0.0)
    window_steps = window_images = 0
    window_start = epoch_start = time.perf_counter()
    data_time = window_data = 0.0
    steps = images = 0
    step = start_step
    desc = f"epoch {epoch + 1}/{epochs}" if epochs else f"epoch {epoch + 1}"
    bar = tqdm(total=total_steps, desc=desc, unit="batch", **tqdm_kwargs(progress))
    fetch_start = time.perf_counter()
    try:
        for batch in loader:
            if max_steps is not None and steps >= max_steps:
                break
            # every image of a batch failed to load (data.on_error=skip; counted and logged): under DDP all ranks
            # skip that step together, or the others would wait for its gradients
            if any_rank(batch is None, device):
                continue
            data_time = time.perf_counter() - fetch_start
            batch = _move_batch(batch, device, channels_last)
            inputs = batch["inputs"]
            targets = normalize_targets(batch, base.image_size(inputs), device=device)
            optimizer.zero_grad(set_to_none=True)  # before the forward: old gradients do not add to its peak
            with _autocast(device, amp_dtype):
                outputs = model(inputs)
            parts = loss_fn(outputs, base.anchors(inputs), targets)
            loss = parts["loss"]
            if not bool(torch.isfinite(loss)):
                raise FloatingPointError(
                    f"non-finite loss at epoch {epoch + 1}, step {step + 1}, on images {list(batch['names'])}: "
                    f"{_loss_summary(parts)}"
                )
            lr = optimizer.param_groups[0]["lr"]  # the rate this step uses
            if scaler is not None and scaler.is_enabled():
                scaler.scale(loss).backward()
                if grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                if grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                optimizer.step()
            if scheduler is not None:
                scheduler.step()
            step += 1
            steps += 1
            batch_images = int(inputs.shape[0])
            images += batch_images
            values = {k: float(parts[k].detach()) for k in LOSS_KEYS}
            values["pos_per_image"] = float(parts["num_pos"].float().mean())
            for key, value in values.items():
                sums[key] += value
                window[key] += value
            window_steps += 1
            window_images += batch_images
            window_data += data_time
            bar.update(1)
            last = total_steps is not None and steps >= total_steps
            if window_steps >= log_every or last:
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                record = {
                    "kind": "step",
                    "epoch": epoch + 1,
                    "step": step,
                    **{k: v / window_steps for k, v in window.items()},
                    "lr": lr,
                    "images_per_s": window_images / elapsed,
                    "data_s_per_step": window_data / window_steps,
                    "gpu_mem_mib": _gpu_memory_mib(device),
                    "time": time.time(),
                }
                bar.set_postfix(loss=f"{record['loss']:.3f}", pos=f"{record['pos_per_image']:.1f}", refresh=False)
                if log_fn is not None:
                    log_fn(record)
                window = dict.fromkeys(window, 0.0)
                window_steps = window_images = 0
                window_data = 0.0
                window_start = time.perf_counter()
            fetch_start = time.perf_counter()
    finally:
        bar.close()
    if steps == 0:
        raise ValueError("the training loader produced no batch (empty dataset, or batch_size > images with drop_last)")
    elapsed = max(time.perf_counter() - epoch_start, 1e-9)
    averages = {k: v / steps for k, v in sums.items()}
    averages.update(steps=steps, images=images, images_per_s=images / elapsed)
    return averages


# ---- evaluation -----------------------------------------------------------------------------------
def preview_image(
    inputs: Tensor,
    *,
    input_kind: str,
    channel_order: str = "bgr",
    pixel_mean: tuple[float, float, float] = (104.0, 117.0, 123.0),
    pixel_std: tuple[float, float, float] = (1.0, 1.0, 1.0),
    latent_stride: int = 16,
) -> np.ndarray:
    """A viewable ``uint8 [H, W, 3]`` RGB picture of one network input in the network frame.

    RGB inputs are un-normalised; a latent ``[C, h, w]`` is shown as its per-cell channel energy (mean |x|),
    scaled to 0..255 and enlarged by `latent_stride` so that network-frame boxes fit on it.
    """
    x = inputs.detach().float().cpu()
    if input_kind == "latent":
        energy = x.abs().mean(0)  # (h, w)
        energy = (energy - energy.min()) / (energy.max() - energy.min()).clamp_min(1e-6)
        gray = (energy * 255).round().to(torch.uint8).numpy()
        gray = np.repeat(np.repeat(gray, latent_stride, axis=0), latent_stride, axis=1)
        return np.stack([gray] * 3, axis=-1)
    mean = torch.tensor(pixel_mean).view(3, 1, 1)  # (3, 1, 1)
    std = torch.tensor(pixel_std).view(3, 1, 1)  # (3, 1, 1)
    image = (x * std + mean).clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy()  # (H, W, 3)
    if channel_order == "bgr":
        image = image[..., ::-1]
    return np.ascontiguousarray(image)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Mapping[str, Any]],
    *,
    device: torch.device,
    loss_fn: nn.Module | None = None,
    compute_ap: bool = True,
    num_classes: int = 2,
    conf_thresh: float = 0.02,
    nms_thresh: float = 0.4,
    top_k: int = 5000,
    keep_top_k: int = 750,
    iou_thresh: float = 0.5,
    variances: tuple[float, float] = (0.1, 0.2),
    cls_loss: str = "ohem",
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    max_batches: int | None = None,
    keep_samples: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """One pass over a validation split: loss parts (with `loss_fn`) and detection AP (with `compute_ap`).

    Detections come from `nbsrc.postprocess.postprocess` and are matched to the batch's ground truth in the
    network frame (IoU does not change under the per-axis scaling back to the original image). The model is
    left in eval mode; callers switch it back to training.

    Returns:
        ``val_loss``, ``val_loss_box``, ``val_loss_cls``, ``val_loss_landm``, ``val_pos_per_image`` (with a loss),
        ``ap_face`` (and ``ap_person`` for 3-class models), ``ap`` (mean over classes with ground truth; NaN when
        the split has none), ``images``; and ``samples``: up to `keep_samples` dicts ``(input, detections,
        gt_boxes, name)`` on the CPU for previews.
    """
    model.eval()
    base = unwrap_model(model)
    sums = dict.fromkeys((*LOSS_KEYS, "pos_per_image"), 0.0)
    batches = images = 0
    classes = list(range(1, num_classes))
    pred_boxes: dict[int, list[np.ndarray]] = {c: [] for c in classes}
    pred_scores: dict[int, list[np.ndarray]] = {c: [] for c in classes}
    gt_boxes: dict[int, list[np.ndarray]] = {c: [] for c in classes}
    samples: list[dict[str, Any]] = []
    total = len(loader) if hasattr(loader, "__len__") else None
    if max_batches is not None and total is not None:
        total = min(total, max_batches)
    bar = tqdm(total=total, desc="validate", unit="batch", **tqdm_kwargs(progress))
    try:
        for batch in loader:
            if max_batches is not None and batches >= max_batches:
                break
            if batch is None:  # every image of the batch failed to load (data.on_error=skip; counted and logged)
                continue
            batch = _move_batch(batch, device, channels_last)
            inputs = batch["inputs"]
            image_size = base.image_size(inputs)
            anchors = base.anchors(inputs)
            with _autocast(device, amp_dtype):
                outputs = model(inputs)
            if loss_fn is not None:
                parts = loss_fn(outputs, anchors, normalize_targets(batch, image_size, device=device))
                for key in LOSS_KEYS:
                    sums[key] += float(parts[key])
                sums["pos_per_image"] += float(parts["num_pos"].float().mean())
            if compute_ap or len(samples) < keep_samples:
                detections = postprocess(
                    outputs,
                    anchors,
                    image_size,
                    conf_thresh=conf_thresh,
                    nms_thresh=nms_thresh,
                    top_k=top_k,
                    keep_top_k=keep_top_k,
                    variances=variances,
                    cls_loss=cls_loss,
                )
                counts = batch["num_boxes"].cpu().tolist()
                boxes_cpu = batch["boxes"].cpu()
                labels_cpu = batch["labels"].cpu()
                for index, det in enumerate(detections):
                    n = int(counts[index])
                    gt_b = boxes_cpu[index, :n].numpy()
                    gt_l = labels_cpu[index, :n].numpy()
                    d_boxes = det["boxes"].float().cpu().numpy()
                    d_scores = det["scores"].float().cpu().numpy()
                    d_labels = det["labels"].cpu().numpy()
                    for c in classes:
                        keep = d_labels == c
                        pred_boxes[c].append(d_boxes[keep])
                        pred_scores[c].append(d_scores[keep])
                        gt_boxes[c].append(gt_b[gt_l == c])
                    if len(samples) < keep_samples:
                        samples.append(
                            {
                                "input": inputs[index].float().cpu(),
                                "detections": {"boxes": d_boxes, "scores": d_scores, "labels": d_labels},
                                "gt_boxes": gt_b,
                                "name": batch["names"][index],
                            }
                        )
            batches += 1
            images += int(inputs.shape[0])
            bar.update(1)
    finally:
        bar.close()
    result: dict[str, Any] = {"images": images}
    if loss_fn is not None and batches:
        result.update({f"val_{k}": v / batches for k, v in sums.items()})
    if compute_ap:
        aps = []
        for c in classes:
            has_gt = sum(len(g) for g in gt_boxes[c]) > 0
            ap = (
                detection_ap(pred_boxes[c], pred_scores[c], gt_boxes[c], iou_thresh=iou_thresh)
                if has_gt
                else float("nan")
            )
            result[f"ap_{CLASS_NAMES.get(c, c)}"] = float(ap)
            if has_gt:
                aps.append(float(ap))
        result["ap"] = float(np.mean(aps)) if aps else float("nan")
    result["samples"] = samples
    return result


def evaluate_loss(
    model: nn.Module, loss_fn: nn.Module, loader: Iterable[Mapping[str, Any]], *, device: torch.device, **kwargs: Any
) -> dict[str, float]:
    """Average validation loss parts (``val_loss``, ``val_loss_box``, ...) over `loader` (see `evaluate`)."""
    result = evaluate(model, loader, device=device, loss_fn=loss_fn, compute_ap=False, **kwargs)
    return {k: v for k, v in result.items() if k.startswith("val_")}


def evaluate_ap(model: nn.Module, loader: Iterable[Mapping[str, Any]], *, device: torch.device, **kwargs: Any) -> dict:
    """Detection AP per class at ``iou_thresh`` over `loader`, through postprocess + VOC AP (see `evaluate`)."""
    result = evaluate(model, loader, device=device, loss_fn=None, compute_ap=True, **kwargs)
    return {k: v for k, v in result.items() if k.startswith("ap")}


# ---- the whole run ----------------------------------------------------------------------------------
def resolve_dataset_root_config(cfg: Config, info: DistInfo | None = None) -> Config:
    """`cfg` with ``data.dataset_root`` set: unchanged when given, else the demo dataset (built once; on Kaggle
    the attached dataset). Rank 0 resolves (and builds) it, the other ranks receive its path. On Kaggle an unset
    ``data.images_root`` becomes the input mount (searched for a WIDER FACE image tree); an unset
    ``data.cache_dir`` becomes the cache folder."""
    info = info or DistInfo()
    from nbsrc.data.demo import resolve_dataset_root
    from nbsrc.paths import cache_dir, resolve_images_root

    found = resolve_images_root(None) if cfg.data.images_root is None else None  # Kaggle: the attached inputs
    if found is not None:
        cfg = cfg.replace(**{"data.images_root": str(found)})
    if cfg.data.cache_dir is None:
        cfg = cfg.replace(**{"data.cache_dir": str(cache_dir())})
    if cfg.data.dataset_root is not None:
        return cfg

    root = None
    if info.is_main:
        root = str(resolve_dataset_root(None))  # the demo dataset locally (built once), the attached one on Kaggle
    barrier()
    root = broadcast_object(root)
    if root is None:
        root = str(resolve_dataset_root(None))
    logger.info("dataset_root not set: using %s", root)
    return cfg.replace(**{"data.dataset_root": root})


def _choose_run_folder(cfg: Config) -> tuple[Config, Path, bool]:
    """``(cfg with train.run_name fixed, run folder, whether the name is a new default one)``."""
    name = cfg.train.run_name
    if name is None and cfg.train.resume is not None:
        resume_dir = Path(cfg.train.resume).resolve().parent
        if (resume_dir / "config.json").is_file():
            if os.access(resume_dir, os.W_OK):
                named = cfg.replace(**{"train.run_name": resume_dir.name, "train.out": str(resume_dir.parent)})
                return named, resume_dir, False
            name = resume_dir.name
    fresh = name is None
    if fresh:
        name = make_run_name(cfg)
    return cfg.replace(**{"train.run_name": name}), Path(cfg.train.out) / name, fresh


def resolve_run_folder(cfg: Config) -> tuple[Config, Path]:
    """The run's folder, and `cfg` with ``train.run_name`` fixed (the same on every rank); nothing is created
    (`claim_run_folder` does that when the run starts).

    ``train.run_name`` names a folder under ``train.out``. Without one, a resumed run continues in its
    checkpoint's folder when that folder is writable; when it is not (an earlier Kaggle version's output,
    attached read-only as an input), in a folder of the same name under ``train.out``, which `fit`
    starts with the earlier ``metrics.jsonl`` and ``best.pth``. A new run is named after its preset and start time.
    """
    cfg, run_dir, fresh = _choose_run_folder(cfg)
    name = cfg.train.run_name
    if fresh:  # the first free name: two runs started in the same second get different folders
        base = name
        for index in range(2, 1000):
            if not (Path(cfg.train.out) / name).exists():
                break
            name = f"{base}-{index}"
    name = broadcast_object(name)
    cfg = cfg.replace(**{"train.run_name": name})
    return cfg, Path(cfg.train.out) / name


def _claim_new_name(cfg: Config) -> tuple[Config, Path, RunClaim]:
    """Claim the first free folder of a new run's default name (``NAME``, ``NAME-2``, ...), created by ``mkdir``."""
    base = cfg.train.run_name
    for index in range(1, 1000):
        name = base if index == 1 else f"{base}-{index}"
        folder = Path(cfg.train.out) / name
        try:
            return cfg.replace(**{"train.run_name": name}), folder, claim(folder, fresh=True)
        except FileExistsError:  # another run took this name first (RunFolderBusy included)
            if not folder.is_dir():
                raise
    raise FileExistsError(f"{cfg.train.out}: no free run folder name from {base} to {base}-999")


def claim_run_folder(cfg: Config, info: DistInfo | None = None) -> tuple[Config, Path, RunClaim | None]:
    """Choose the run's folder as `resolve_run_folder` does, and claim it for this run (`nbsrc.runs.claim`).

    A new run's default name is claimed with ``mkdir`` (the next free ``-2``, ``-3``, ... when another run took it
    first); a named or resumed run's folder is claimed through its lock. Under DDP rank 0 claims and the other ranks
    receive its folder (their claim is None). The caller releases the claim when the run ends.

    Raises:
        RunFolderBusy: on every rank, when a live run holds the folder (the message names its PID and start time).
    """
    info = info or DistInfo()
    held, error, outcome = None, None, None
    if info.is_main:
        try:
            cfg, run_dir, fresh = _choose_run_folder(cfg)
            if fresh:
                cfg, run_dir, held = _claim_new_name(cfg)
            else:
                held = claim(run_dir)
            outcome = ("ok", cfg.train.out, cfg.train.run_name)
        except Exception as exc:  # told to the other ranks, which would otherwise wait for rank 0 forever
            error, outcome = exc, ("error", isinstance(exc, RunFolderBusy), str(exc))
    outcome = broadcast_object(outcome)
    if error is not None:
        raise error
    if outcome[0] == "error":
        raise (RunFolderBusy if outcome[1] else RuntimeError)(outcome[2])
    cfg = cfg.replace(**{"train.out": outcome[1], "train.run_name": outcome[2]})
    return cfg, Path(outcome[1]) / outcome[2], held


def _earlier_checkpoints(run_dir: Path) -> list[str]:
    """The checkpoints of an earlier run that `run_dir` holds: a new run never writes over them. A folder left by
    a start that failed before its first epoch (config.json, metrics) holds none."""
    if not run_dir.is_dir():
        return []
    names = ("last.pth", "weight_final.pth")
    return sorted(p.name for p in run_dir.iterdir() if p.name in names or p.match("epoch_*.pth"))


def load_start_weights(model: nn.Module, cfg: Config) -> dict[str, Any] | None:
    """Load what a run starts from into `model`, strictly: ``train.resume`` (which must hold the training state;
    returned, for the optimizer, scaler and schedule) or else ``train.weight``. Returns None without a resume."""
    t = cfg.train
    if t.resume is not None:
        checkpoint = load_checkpoint(t.resume)
        check_resumable(checkpoint, t.resume)
        load_state_dict_strict(model, checkpoint["model"], str(t.resume))
        return checkpoint
    if t.weight is not None:
        load_state_dict_strict(model, load_checkpoint(t.weight)["model"], str(t.weight))
    return None


def _continue_run_folder(run_dir: Path, resume: str | Path) -> None:
    """Start a resumed run's new folder (not its checkpoint's) with what the checkpoint's folder holds of the run
    so far: the metrics and the best checkpoint (which a later epoch may not beat)."""
    earlier = Path(resume).resolve().parent
    for name in ("metrics.jsonl", "best.pth"):
        if (earlier / name).is_file() and not (run_dir / name).exists():
            with atomic_path(run_dir / name) as tmp:
                shutil.copyfile(earlier / name, tmp)
            logger.info("continuing from %s", earlier / name)


def _complete_best(run_dir: Path, resume: Path, history: Mapping[str, Any]) -> None:
    """Finish the end of the epoch a run resumes after: when that epoch was the best so far, ``best.pth`` is its
    checkpoint (a run killed after writing ``last.pth`` had not written ``best.pth`` yet)."""
    best = run_dir / "best.pth"
    if not history.get("best") or (best.is_file() and filecmp.cmp(resume, best, shallow=False)):
        return
    _copy_atomic(resume, best)
    logger.info("%s: epoch %s, the best so far, from %s", best, history.get("epoch"), resume)


def _trim_metrics(path: Path, step: int, epoch: int) -> None:
    """Drop records written after the checkpoint a run resumes from (the killed epoch's steps)."""
    if not path.is_file():
        return
    kept = [
        r
        for r in read_jsonl(path)
        if (r.get("kind") == "step" and r.get("step", 0) <= step)
        or (r.get("kind") == "epoch" and r.get("epoch", 0) <= epoch)
        or r.get("kind") not in ("step", "epoch")
    ]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def _whole_split_loader(loader: torch.utils.data.DataLoader) -> torch.utils.data.DataLoader:
    """The same batches without a distributed sampler (every image of the split, in order)."""
    return torch.utils.data.DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        shuffle=False,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
    )


def _prune_epoch_files(run_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` ``epoch_XXX.pth`` files (``last.pth`` and ``best.pth`` are copies)."""
    files = sorted(run_dir.glob("epoch_[0-9][0-9][0-9]*.pth"), key=lambda p: int(p.stem.split("_")[1]))
    for path in files[: max(0, len(files) - keep)]:
        path.unlink(missing_ok=True)


def _copy_atomic(source: Path, destination: Path) -> None:
    with atomic_path(destination) as tmp:
        shutil.copyfile(source, tmp)


def _log_previews(tracker: Tracker, cfg: Config, samples: list[dict[str, Any]], step: int, latent_stride: int) -> None:
    if not tracker.enabled or not samples:
        return
    m = cfg.model
    images, dets, gts, captions = [], [], [], []
    for sample in samples:
        images.append(
            preview_image(
                sample["input"],
                input_kind=m.input_kind,
                channel_order=m.channel_order,
                pixel_mean=m.pixel_mean,
                pixel_std=m.pixel_std,
                latent_stride=latent_stride,
            )
        )
        keep = sample["detections"]["scores"] >= 0.5
        dets.append({k: v[keep] for k, v in sample["detections"].items()})
        gts.append(sample["gt_boxes"])
        captions.append(sample["name"])
    tracker.log_detections("val/detections", images, dets, gts, captions=captions, step=step)


def fit(cfg: Config, *, start_epoch: int | None = None) -> Path:
    """Train `cfg` and return the run folder (see the module docstring for its contents).

    Args:
        cfg: the configuration. ``data.dataset_root=None`` uses the demo dataset locally (the attached dataset
            on Kaggle). ``train.weight`` initialises the model from a checkpoint; ``train.resume`` continues a
            run (its folder is reused when ``train.run_name`` is not set).
        start_epoch: with ``train.weight``, count the weights as trained for this many epochs (the learning-rate
            schedule starts there; the ancestors' ``--resume_epoch``). Ignored when resuming.

    Raises:
        FloatingPointError: a non-finite loss (names the batch's images and the loss parts).
        FileNotFoundError / ValueError: bad dataset, checkpoint or configuration.
        RunFolderBusy: another live run holds the run folder.
    """
    t = cfg.train
    device = torch.device(t.device) if t.device != "auto" else None
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {t.device!r} requested but CUDA is not available (use device=cpu or auto)")
    info = init_distributed(device)
    if info.distributed and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    device = select_device(str(device))  # a GPU this torch build cannot run stops here, with what to choose instead
    cfg = resolve_dataset_root_config(cfg, info)
    cfg, run_dir, held = claim_run_folder(cfg, info)
    try:
        return _fit_in(cfg, run_dir, info, device, start_epoch)
    finally:
        if held is not None:
            held.release()


def _fit_in(cfg: Config, run_dir: Path, info: DistInfo, device: torch.device, start_epoch: int | None) -> Path:
    """`fit` in its claimed run folder."""
    from nbsrc.data.loaders import build_dataloaders
    from nbsrc.model import build_model

    t = cfg.train
    metrics_path = run_dir / "metrics.jsonl"
    # a run continues in its own folder only: a new run, or one resumed into another run's folder, writes over nothing
    continuing = t.resume is not None and Path(t.resume).resolve().parent == run_dir.resolve()
    earlier = broadcast_object(_earlier_checkpoints(run_dir) if info.is_main and not continuing else [])
    if earlier:
        listed = ", ".join(earlier[:4]) + (", ..." if len(earlier) > 4 else "")
        latest = "last.pth" if "last.pth" in earlier else earlier[-1]
        raise FileExistsError(
            f"{run_dir}: holds an earlier run ({listed}); continue it with train.resume={run_dir / latest} "
            "(--resume), or choose another train.run_name (--run_name)"
        )

    # the checkpoints are read and fitted to the model before anything is written into the run folder
    seed_everything(t.seed)
    full_weights = t.weight is not None or t.resume is not None  # loaded below: no ImageNet backbone to look for
    model = build_model(cfg.replace(**{"model.pretrained": "none"}) if full_weights else cfg)
    resumed = load_start_weights(model, cfg)
    if resumed is None and t.weight is not None:
        logger.info("initialised from %s", t.weight)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.to_json(run_dir / "config.json")
        if t.resume is not None and not continuing:
            _continue_run_folder(run_dir, t.resume)
    logger.info("run folder %s (preset %s, device %s, %d process(es))", run_dir, cfg.preset, device, info.world_size)
    if t.freeze_backbone:
        if not full_weights and getattr(model, "pretrained_source", None) is None:
            logger.warning(
                "train.freeze_backbone with a backbone from random init (no pretrained %s weights, no train.weight): "
                "the frozen backbone stays random; give model.pretrained=PATH or train.weight, or do not freeze",
                cfg.model.backbone,
            )
        model.freeze_backbone(True)
    if info.is_main:  # what this (re)start began from, e.g. whether the ImageNet backbone was really found
        start = t.resume or t.weight or getattr(model, "pretrained_source", None) or "random init"
        append_jsonl(
            metrics_path,
            {
                "kind": "start",
                "time": time.time(),
                "weights": str(start),
                "device": str(device),
                "processes": info.world_size,
            },
        )
    model.to(device)
    channels_last = t.channels_last and device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    loss_fn = build_loss(cfg).to(device)
    amp_dtype = resolve_amp(t.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    train_loader, val_loader = build_dataloaders(cfg, distributed=info.distributed)
    if val_loader is not None and info.distributed:
        val_loader = _whole_split_loader(val_loader)  # rank 0 validates on the whole split
    steps_per_epoch = len(train_loader)
    if t.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, t.max_steps_per_epoch)
    if steps_per_epoch < 1:
        raise ValueError(f"{cfg.data.dataset_root}: the training split yields no batch of {t.batch_size} images")
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch)

    first_epoch, global_step = 0, 0
    best_score, history = -math.inf, {}
    rng_state = None
    if resumed is not None:
        checkpoint = resumed
        try:
            optimizer.load_state_dict(checkpoint["optimizer"])
        except (ValueError, KeyError) as exc:
            raise ValueError(f"{t.resume}: its optimizer state does not fit this run's optimizer ({exc})") from None
        if scaler.is_enabled() and checkpoint.get("scaler"):  # a run without fp16 saved an empty state
            scaler.load_state_dict(checkpoint["scaler"])
        if checkpoint.get("scheduler") is not None:
            state = dict(checkpoint["scheduler"])
            state["lr_lambdas"] = [None] * len(scheduler.lr_lambdas)  # keep this config's schedule (e.g. more epochs)
            scheduler.load_state_dict(state)
        first_epoch = int(checkpoint["epoch"])
        global_step = int(checkpoint.get("step", first_epoch * steps_per_epoch))
        best_score = float(checkpoint.get("best_score", -math.inf))
        history = dict(checkpoint.get("metrics") or {})
        rng_state = checkpoint.get("rng")
        logger.info("resumed from %s at epoch %d, step %d", t.resume, first_epoch, global_step)
        if info.is_main:
            _trim_metrics(metrics_path, global_step, first_epoch)
            _complete_best(run_dir, Path(t.resume), history)
    elif start_epoch:
        first_epoch, global_step = int(start_epoch), int(start_epoch) * steps_per_epoch
        scheduler.last_epoch = global_step
    for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base_lr * scheduler.lr_lambdas[0](scheduler.last_epoch)
    if first_epoch >= t.epochs:
        logger.warning("nothing to train: the checkpoint has %d epochs, train.epochs is %d", first_epoch, t.epochs)

    train_model: nn.Module = model
    if info.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if t.compile:
        train_model = torch.compile(train_model)

    tracker = build_tracker(cfg, run_dir) if info.is_main else Tracker()
    if rng_state is not None:
        set_rng_state(rng_state)
    if info.rank:
        seed_everything(t.seed + 1000 * info.rank + first_epoch)  # different augmentation streams per rank

    def log_step(record: dict[str, Any]) -> None:
        record["images_per_s"] *= info.world_size  # every process trains on as many images
        if info.is_main:
            append_jsonl(metrics_path, record)
            tracker.log({f"train/{k}": v for k, v in record.items() if k not in ("kind", "time")}, step=record["step"])

    best_key = "val_ap" if val_loader is not None else "train_loss"
    ev = cfg.eval
    latent_stride = getattr(model, "latent_stride", 1)
    try:
        for epoch in range(first_epoch, t.epochs):
            train_loader.sampler.set_epoch(epoch)  # order and augmentation from (seed, epoch): see SeededSampler
            train_stats = train_one_epoch(
                train_model,
                loss_fn,
                train_loader,
                optimizer,
                device=device,
                epoch=epoch,
                epochs=t.epochs,
                scheduler=scheduler,
                scaler=scaler,
                amp_dtype=amp_dtype,
                grad_clip=t.grad_clip,
                channels_last=channels_last,
                max_steps=t.max_steps_per_epoch,
                start_step=global_step,
                log_every=min(LOG_EVERY, steps_per_epoch),
                log_fn=log_step,
                progress=t.progress and info.is_main,
            )
            global_step += int(train_stats["steps"])
            train_stats["images"] *= info.world_size
            train_stats["images_per_s"] *= info.world_size
            record: dict[str, Any] = {"kind": "epoch", "epoch": epoch + 1, "step": global_step}
            record.update({f"train_{k}": v for k, v in train_stats.items()})
            last_epoch = epoch + 1 == t.epochs
            if info.is_main and val_loader is not None and ((epoch + 1) % t.eval_every == 0 or last_epoch):
                result = evaluate(
                    model,
                    val_loader,
                    device=device,
                    loss_fn=loss_fn,
                    num_classes=cfg.model.num_classes,
                    conf_thresh=ev.conf_thresh,
                    nms_thresh=ev.nms_thresh,
                    top_k=ev.top_k,
                    keep_top_k=ev.keep_top_k,
                    iou_thresh=ev.iou_thresh,
                    variances=tuple(cfg.anchors.variances),
                    cls_loss=cfg.loss.cls_loss,
                    amp_dtype=amp_dtype,
                    channels_last=channels_last,
                    keep_samples=PREVIEW_IMAGES if tracker.enabled else 0,
                    progress=t.progress,
                )
                samples = result.pop("samples")
                record.update({k if k.startswith("val_") else f"val_{k}": v for k, v in result.items()})
                _log_previews(tracker, cfg, samples, global_step, latent_stride)
            train_model.train()
            score = _score(record, best_key)
            improved = score is not None and score > best_score
            if improved:
                best_score = score
            record["best"] = improved
            if info.is_main:
                history = {k: v for k, v in record.items() if k != "kind"}
                extra = {"step": global_step, "best_score": best_score, "best_key": best_key, "rng": get_rng_state()}
                epoch_path = run_dir / f"epoch_{epoch + 1:03d}.pth"
                save_checkpoint(
                    epoch_path,
                    model=model,
                    config=cfg,
                    epoch=epoch + 1,
                    optimizer=optimizer,
                    scaler=scaler,
                    scheduler=scheduler,
                    metrics=history,
                    **extra,
                )
                # the epoch's metrics line, then last.pth: a resume continues from last.pth, dropping the metrics
                # written after it (and training that epoch again); best.pth comes last (a resume completes it)
                append_jsonl(metrics_path, {**record, "time": time.time()})
                _copy_atomic(epoch_path, run_dir / "last.pth")
                if improved:
                    _copy_atomic(epoch_path, run_dir / "best.pth")
                if t.keep_epochs is not None:
                    _prune_epoch_files(run_dir, keep=t.keep_epochs)
                tracker.log({f"epoch/{k}": v for k, v in record.items() if k != "kind"}, step=global_step)
                logger.info("epoch %d/%d: %s", epoch + 1, t.epochs, _epoch_line(record))
            barrier()
        if info.is_main:
            save_checkpoint(
                run_dir / "weight_final.pth", model=model, config=cfg, epoch=max(first_epoch, t.epochs), metrics=history
            )
            if (run_dir / "best.pth").is_file():
                tracker.log_checkpoint(
                    run_dir / "best.pth",
                    name=f"{run_dir.name}-best",
                    aliases=("best", "latest"),
                    metadata={"best_key": best_key, "best_score": best_score, "preset": cfg.preset},
                )
            tracker.summary({"best_key": best_key, "best_score": best_score})
        barrier()
    finally:
        tracker.finish()
    return run_dir


def _score(record: Mapping[str, Any], key: str) -> float | None:
    """Higher-is-better score of an epoch record: validation AP, or minus the training loss."""
    if key == "val_ap":
        value = record.get("val_ap")
        if value is None or not math.isfinite(value):
            value = -record["val_loss"] if "val_loss" in record else None
        return value
    return -float(record["train_loss"])


def _epoch_line(record: Mapping[str, Any]) -> str:
    keys = ("train_loss", "train_pos_per_image", "train_images_per_s", "val_loss", "val_ap_face", "val_ap_person")
    return ", ".join(f"{k}={record[k]:.4g}" for k in keys if isinstance(record.get(k), (int, float)))
