"""The training loop as plain functions: `fit` runs a whole training from a `Config`; `train_one_epoch`,
`evaluate` and `evaluate_ap` are its parts, usable on their own.

A run folder ``<train.out>/<run_name>/`` (chosen and claimed as `nbsrc.runs` says) holds ``config.json``,
``metrics.jsonl`` (one ``kind="start"`` line per (re)start, ``kind="step"`` every `LOG_EVERY` steps, ``kind="epoch"``
per epoch), ``epoch_XXX.pth`` per epoch (the newest ``train.keep_epochs`` when set), ``last.pth``, ``best.pth`` (best
validation AP, else best training loss) and ``weight_final.pth``.

Every file is written atomically; ``train.resume`` restores model, optimizer, GradScaler, epoch, step, schedule, RNG
states and data order, so a resumed run gives the same weights as an uninterrupted one. An epoch ends with its
checkpoint, its metrics line, ``last.pth`` (where a resume continues), then ``best.pth`` (which a resume completes),
so a kill at any point loses neither the best model nor a metrics line. Under ``torchrun`` the model is wrapped in
DistributedDataParallel and only rank 0 claims the folder, writes files and logs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from nbsrc.checkpoint import (
    complete_best,
    continue_run_folder,
    get_rng_state,
    save_checkpoint,
    set_rng_state,
    unwrap_model,
)
from nbsrc.config import Config, EvalConfig
from nbsrc.data.demo import resolve_dataset_root
from nbsrc.data.loaders import build_dataloaders
from nbsrc.data.records import CLASS_NAMES
from nbsrc.distributed import DistInfo, any_rank, barrier, broadcast_object, init_distributed
from nbsrc.evaluation.detection_ap import detection_ap
from nbsrc.loss import build_loss, normalize_targets
from nbsrc.model import build_model
from nbsrc.model.loading import load_start_weights
from nbsrc.optim import build_optimizer, build_scheduler
from nbsrc.paths import cache_dir, resolve_images_root
from nbsrc.pictures import preview_picture
from nbsrc.postprocess import postprocess
from nbsrc.runs import claim_run_folder, prune_epoch_files, refuse_earlier_run, trim_metrics
from nbsrc.tracking import Tracker, build_tracker
from nbsrc.utils import append_jsonl, atomic_copy, seed_everything, select_device, tqdm_kwargs

__all__ = ["evaluate", "evaluate_ap", "fit", "resolve_amp", "resolve_dataset_root_config", "train_one_epoch"]

logger = logging.getLogger(__name__)

LOSS_KEYS = ("loss", "loss_box", "loss_cls", "loss_landm")
AVERAGED = (*LOSS_KEYS, "pos_per_image")  # what a step record and an epoch average
LOG_EVERY = 10  # optimizer steps between metrics.jsonl step records
PREVIEW_IMAGES = 4  # validation images logged with their detections to W&B


# ---- small helpers ------------------------------------------------------------------------------
def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``train.amp`` on `device` (None = float32): ``auto`` is bf16 on GPUs with native bf16
    (compute capability >= 8), fp16 (with a GradScaler) on older GPUs, off on the CPU; ``bf16`` falls back to fp16
    on a GPU without it."""
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


def _inputs_on(batch: Mapping[str, Any], device: torch.device, channels_last: bool) -> Tensor:
    inputs = batch["inputs"].to(device, non_blocking=True)
    return inputs.contiguous(memory_format=torch.channels_last) if channels_last else inputs


def _targets_on(batch: Mapping[str, Any], image_size: tuple[int, int], device: torch.device) -> dict[str, Tensor]:
    """The loss targets of a batch, checked and normalized where the loader made them (the host: no GPU sync),
    then moved to `device`."""
    return {k: v.to(device, non_blocking=True) for k, v in normalize_targets(batch, image_size).items()}


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def _gpu_memory_mib(device: torch.device) -> float:
    if device.type != "cuda":
        return 0.0
    value = torch.cuda.max_memory_allocated(device) / 2**20
    torch.cuda.reset_peak_memory_stats(device)
    return round(value, 1)


def _batches_to_run(loader: Iterable[Any], limit: int | None) -> int | None:
    """How many batches a pass over `loader` runs, at most `limit` (None: unknown)."""
    total = len(loader) if hasattr(loader, "__len__") else None
    if limit is not None:
        total = min(total, limit) if total is not None else limit
    return total


def _loss_values(parts: Mapping[str, Tensor]) -> dict[str, float]:
    """The averaged quantities of one batch's loss parts as floats (`AVERAGED`)."""
    values = {k: float(parts[k].detach()) for k in LOSS_KEYS}
    values["pos_per_image"] = float(parts["num_pos"].float().mean())
    return values


# ---- one epoch ------------------------------------------------------------------------------------
class _Meter:
    """Sums of the averaged quantities over the epoch, and over the window since the last step record."""

    def __init__(self) -> None:
        self.sums = dict.fromkeys(AVERAGED, 0.0)
        self.steps = self.images = 0
        self.start = time.perf_counter()
        self._new_window()

    def _new_window(self) -> None:
        self.window = dict.fromkeys(AVERAGED, 0.0)
        self.window_steps = self.window_images = 0
        self.window_data = 0.0
        self.window_start = time.perf_counter()

    def add(self, values: Mapping[str, float], images: int, data_time: float) -> None:
        for key, value in values.items():
            self.sums[key] += value
            self.window[key] += value
        self.steps += 1
        self.images += images
        self.window_steps += 1
        self.window_images += images
        self.window_data += data_time

    def step_record(self, epoch: int, step: int, lr: float, device: torch.device) -> dict[str, Any]:
        """The ``kind="step"`` record of the window (averages since the previous record); starts a new window."""
        elapsed = max(time.perf_counter() - self.window_start, 1e-9)
        record = {
            "kind": "step",
            "epoch": epoch + 1,
            "step": step,
            **{k: v / self.window_steps for k, v in self.window.items()},
            "lr": lr,
            "images_per_s": self.window_images / elapsed,
            "data_s_per_step": self.window_data / self.window_steps,
            "gpu_mem_mib": _gpu_memory_mib(device),
            "time": time.time(),
        }
        self._new_window()
        return record

    def averages(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        averages = {k: v / self.steps for k, v in self.sums.items()}
        averages.update(steps=self.steps, images=self.images, images_per_s=self.images / elapsed)
        return averages


def _backward_and_step(
    loss: Tensor, optimizer: torch.optim.Optimizer, scaler: Any, params: list[nn.Parameter], grad_clip: float
) -> bool:
    """Backward pass, optional gradient clipping, optimizer step (through the GradScaler when it is enabled).
    Returns False when the GradScaler skipped the step (inf / NaN fp16 gradients: it then lowers its scale)."""
    scaled = scaler is not None and scaler.is_enabled()
    (scaler.scale(loss) if scaled else loss).backward()
    if grad_clip > 0:
        if scaled:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    if not scaled:
        optimizer.step()
        return True
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale() >= scale


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
    """Train for one pass over `loader` (collated batches, at most `max_steps`); returns the epoch's averages of
    `AVERAGED` plus ``steps``, ``images`` and ``images_per_s``.

    `model` may be wrapped in DDP or compiled; `scheduler` is stepped after every optimizer step the GradScaler
    does not skip; `start_step` is the global step before this epoch; `log_fn` gets a ``kind="step"`` record
    (averages since the previous one) every `log_every` steps and after the last. A non-finite loss raises
    `FloatingPointError` naming the batch's images and the loss parts.
    """
    model.train()
    base = unwrap_model(model)
    total = _batches_to_run(loader, max_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    meter, step = _Meter(), start_step
    desc = f"epoch {epoch + 1}/{epochs}" if epochs else f"epoch {epoch + 1}"
    with tqdm(total=total, desc=desc, unit="batch", **tqdm_kwargs(progress)) as bar:
        fetch_start = time.perf_counter()
        for batch in loader:
            if max_steps is not None and meter.steps >= max_steps:
                break
            # every image of a batch failed to load (data.on_error=skip; counted and logged): under DDP all ranks
            # skip that step together, or the others would wait for its gradients
            if any_rank(batch is None, device):
                continue
            data_time = time.perf_counter() - fetch_start
            inputs = _inputs_on(batch, device, channels_last)
            targets = _targets_on(batch, base.image_size(inputs), device)
            optimizer.zero_grad(set_to_none=True)  # before the forward: old gradients do not add to its peak
            with _autocast(device, amp_dtype):
                outputs = model(inputs)
            parts = loss_fn(outputs, base.anchors(inputs), targets)
            if not bool(torch.isfinite(parts["loss"])):
                summary = {**{k: float(parts[k].detach()) for k in LOSS_KEYS}, "num_pos": parts["num_pos"].tolist()}
                raise FloatingPointError(
                    f"non-finite loss at epoch {epoch + 1}, step {step + 1}, on images {list(batch['names'])}: "
                    f"{summary}"
                )
            lr = optimizer.param_groups[0]["lr"]  # the rate this step uses
            stepped = _backward_and_step(parts["loss"], optimizer, scaler, params, grad_clip)
            if scheduler is not None and stepped:
                scheduler.step()
            step += 1
            meter.add(_loss_values(parts), int(inputs.shape[0]), data_time)
            bar.update(1)
            if meter.window_steps >= log_every or (total is not None and meter.steps >= total):
                record = meter.step_record(epoch, step, lr, device)
                bar.set_postfix(loss=f"{record['loss']:.3f}", pos=f"{record['pos_per_image']:.1f}", refresh=False)
                if log_fn is not None:
                    log_fn(record)
            fetch_start = time.perf_counter()
    if meter.steps == 0:
        raise ValueError("the training loader produced no batch (empty dataset, or batch_size > images with drop_last)")
    return meter.averages()


# ---- evaluation -----------------------------------------------------------------------------------
class _Matches:
    """Per class, the detections and ground-truth boxes of every image seen (for `detection_ap`)."""

    def __init__(self, classes: list[int]) -> None:
        self.classes = classes
        self.boxes: dict[int, list[np.ndarray]] = {c: [] for c in classes}
        self.scores: dict[int, list[np.ndarray]] = {c: [] for c in classes}
        self.gt: dict[int, list[np.ndarray]] = {c: [] for c in classes}

    def add(self, det: Mapping[str, np.ndarray], gt_boxes: np.ndarray, gt_labels: np.ndarray) -> None:
        for c in self.classes:
            keep = det["labels"] == c
            self.boxes[c].append(det["boxes"][keep])
            self.scores[c].append(det["scores"][keep])
            self.gt[c].append(gt_boxes[gt_labels == c])

    def average_precision(self, iou_thresh: float) -> dict[str, float]:
        """``ap_<class>`` (NaN for a class without ground truth) and ``ap``, their mean over classes with it."""
        result: dict[str, float] = {}
        aps = []
        for c in self.classes:
            has_gt = sum(len(g) for g in self.gt[c]) > 0
            ap = detection_ap(self.boxes[c], self.scores[c], self.gt[c], iou_thresh=iou_thresh) if has_gt else math.nan
            result[f"ap_{CLASS_NAMES.get(c, c)}"] = float(ap)
            if has_gt:
                aps.append(float(ap))
        result["ap"] = float(np.mean(aps)) if aps else float("nan")
        return result


def _match_batch(
    batch: Mapping[str, Any],
    detections: list[dict[str, Tensor]],
    matches: _Matches,
    samples: list[dict[str, Any]],
    keep_samples: int,
) -> None:
    """Add a batch's detections and ground truth to `matches`; keep up to `keep_samples` preview samples."""
    counts = batch["num_boxes"].cpu().tolist()
    boxes, labels = batch["boxes"].cpu(), batch["labels"].cpu()
    for index, det in enumerate(detections):
        n = int(counts[index])
        gt_boxes, gt_labels = boxes[index, :n].numpy(), labels[index, :n].numpy()
        found = {
            "boxes": det["boxes"].float().cpu().numpy(),
            "scores": det["scores"].float().cpu().numpy(),
            "labels": det["labels"].cpu().numpy(),
        }
        matches.add(found, gt_boxes, gt_labels)
        if len(samples) < keep_samples:
            sample = {"input": batch["inputs"][index].float().cpu(), "detections": found, "gt_boxes": gt_boxes}
            samples.append({**sample, "name": batch["names"][index]})


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Mapping[str, Any]],
    eval_cfg: EvalConfig | None = None,
    *,
    device: torch.device,
    loss_fn: nn.Module | None = None,
    compute_ap: bool = True,
    variances: tuple[float, float] = (0.1, 0.2),
    cls_loss: str = "ohem",
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    max_batches: int | None = None,
    keep_samples: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """One pass over a validation split: loss parts (with `loss_fn`) and detection AP (with `compute_ap`).

    Detections (`nbsrc.postprocess.postprocess` with `eval_cfg`'s thresholds) are matched to the ground truth in the
    network frame (IoU does not change under the per-axis scaling back to the original image). The model is left
    in eval mode. Returns ``val_<AVERAGED>`` (with a loss), ``ap_face`` (and ``ap_person`` for 3-class models),
    ``ap`` (their mean over classes with ground truth; NaN without any), ``images``, and ``samples``: up to
    `keep_samples` CPU dicts ``(input, detections, gt_boxes, name)`` for previews.
    """
    e = eval_cfg or EvalConfig()
    model.eval()
    base = unwrap_model(model)
    sums = dict.fromkeys(AVERAGED, 0.0)
    batches = images = 0
    matches, samples = _Matches(list(range(1, base.num_classes))), []
    total = _batches_to_run(loader, max_batches)
    with tqdm(total=total, desc="validate", unit="batch", **tqdm_kwargs(progress)) as bar:
        for batch in loader:
            if max_batches is not None and batches >= max_batches:
                break
            if batch is None:  # every image of the batch failed to load (data.on_error=skip; counted and logged)
                continue
            inputs = _inputs_on(batch, device, channels_last)
            image_size, anchors = base.image_size(inputs), base.anchors(inputs)
            with _autocast(device, amp_dtype):
                outputs = model(inputs)
            if loss_fn is not None:
                parts = loss_fn(outputs, anchors, _targets_on(batch, image_size, device))
                for key, value in _loss_values(parts).items():
                    sums[key] += value
            if compute_ap or len(samples) < keep_samples:
                detections = postprocess(
                    outputs,
                    anchors,
                    image_size,
                    conf_thresh=e.conf_thresh,
                    nms_thresh=e.nms_thresh,
                    top_k=e.top_k,
                    keep_top_k=e.keep_top_k,
                    variances=variances,
                    cls_loss=cls_loss,
                )
                _match_batch(batch, detections, matches, samples, keep_samples)
            batches += 1
            images += int(inputs.shape[0])
            bar.update(1)
    result: dict[str, Any] = {"images": images}
    if loss_fn is not None and batches:
        result.update({f"val_{k}": v / batches for k, v in sums.items()})
    if compute_ap:
        result.update(matches.average_precision(e.iou_thresh))
    result["samples"] = samples
    return result


def evaluate_ap(
    model: nn.Module,
    loader: Iterable[Mapping[str, Any]],
    eval_cfg: EvalConfig | None = None,
    *,
    device: torch.device,
    **kwargs: Any,
) -> dict[str, float]:
    """Detection AP per class (``ap_*``) and their mean ``ap`` over `loader` (see `evaluate`)."""
    result = evaluate(model, loader, eval_cfg, device=device, loss_fn=None, compute_ap=True, **kwargs)
    return {k: v for k, v in result.items() if k.startswith("ap")}


# ---- setting a run up -------------------------------------------------------------------------------
def resolve_dataset_root_config(cfg: Config, info: DistInfo | None = None) -> Config:
    """`cfg` with ``data.dataset_root`` set: unchanged when given, else the demo dataset (rank 0 builds it once; on
    Kaggle the attached dataset). An unset ``data.images_root`` becomes Kaggle's input mount, an unset
    ``data.cache_dir`` the cache folder."""
    info = info or DistInfo()
    found = resolve_images_root(None) if cfg.data.images_root is None else None  # Kaggle: the attached inputs
    if found is not None:
        cfg = cfg.replace(**{"data.images_root": str(found)})
    if cfg.data.cache_dir is None:
        cfg = cfg.replace(**{"data.cache_dir": str(cache_dir())})
    if cfg.data.dataset_root is not None:
        return cfg
    root = str(resolve_dataset_root(None)) if info.is_main else None
    barrier()
    root = broadcast_object(root) or str(resolve_dataset_root(None))
    logger.info("dataset_root not set: using %s", root)
    return cfg.replace(**{"data.dataset_root": root})


def _training_device(requested: str) -> tuple[torch.device, DistInfo]:
    """This process's training device (`select_device` of ``train.device``) and its place among the training
    processes: under ``torchrun`` a CUDA run trains on the GPU of its local rank."""
    device = select_device(requested)
    info = init_distributed(device)
    if info.distributed and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    return device, info


def _start_model(cfg: Config) -> tuple[nn.Module, dict[str, Any] | None]:
    """The model a run trains (seeded, its start weights loaded strictly before anything is written, the backbone
    frozen with ``train.freeze_backbone``) and the ``train.resume`` checkpoint (None without one)."""
    t = cfg.train
    seed_everything(t.seed)
    full_weights = t.weight is not None or t.resume is not None  # loaded below: no ImageNet backbone to look for
    model = build_model(cfg.replace(**{"model.pretrained": "none"}) if full_weights else cfg)
    resumed = load_start_weights(model, cfg)
    if resumed is None and t.weight is not None:
        logger.info("initialised from %s", t.weight)
    if t.freeze_backbone:
        if not full_weights and getattr(model, "pretrained_source", None) is None:
            logger.warning(
                "train.freeze_backbone with a backbone from random init (no pretrained %s weights, no train.weight): "
                "the frozen backbone stays random; give model.pretrained=PATH or train.weight, or do not freeze",
                cfg.model.backbone,
            )
        model.freeze_backbone(True)
    return model, resumed


def _start_run_folder(cfg: Config, run_dir: Path, info: DistInfo, model: nn.Module, device: torch.device) -> None:
    """Write ``config.json``, carry a resumed run's metrics and best checkpoint over, and record where this
    (re)start began (e.g. whether the ImageNet backbone was really found)."""
    t = cfg.train
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.to_json(run_dir / "config.json")
        if t.resume is not None:
            continue_run_folder(run_dir, t.resume)
        start = t.resume or t.weight or getattr(model, "pretrained_source", None) or "random init"
        record = {"kind": "start", "time": time.time(), "weights": str(start), "device": str(device)}
        append_jsonl(run_dir / "metrics.jsonl", {**record, "processes": info.world_size})
    logger.info("run folder %s (preset %s, device %s, %d process(es))", run_dir, cfg.preset, device, info.world_size)


@dataclass
class _Run:
    """A training run: what it trains with, and where it stands."""

    cfg: Config
    run_dir: Path
    info: DistInfo
    device: torch.device
    model: nn.Module  # the plain model: checkpoints and validation
    train_model: nn.Module  # what trains: the model, wrapped in DDP and / or compiled
    loss_fn: nn.Module
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler
    channels_last: bool
    train_loader: Any
    val_loader: Any
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    tracker: Tracker
    scheduler: Any = None  # built at the step the run starts from (`_restore`)
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    best_score: float = -math.inf
    history: dict[str, Any] = field(default_factory=dict)  # the last epoch's record

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    @property
    def best_key(self) -> str:
        return "val_ap" if self.val_loader is not None else "train_loss"


def _set_up(cfg: Config, run_dir: Path, info: DistInfo, device: torch.device, model: nn.Module) -> _Run:
    """Everything a run trains with: the model on its device, loss, mixed precision, data, optimizer, tracker."""
    t = cfg.train
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
    train_model: nn.Module = model
    if info.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if t.compile:
        train_model = torch.compile(train_model)
    tracker = build_tracker(cfg, run_dir) if info.is_main else Tracker()
    return _Run(
        cfg=cfg,
        run_dir=run_dir,
        info=info,
        device=device,
        model=model,
        train_model=train_model,
        loss_fn=loss_fn,
        amp_dtype=amp_dtype,
        scaler=scaler,
        channels_last=channels_last,
        train_loader=train_loader,
        val_loader=val_loader,
        steps_per_epoch=steps_per_epoch,
        optimizer=optimizer,
        tracker=tracker,
    )


def _restore(run: _Run, resumed: Mapping[str, Any] | None, start_epoch: int | None) -> None:
    """Continue where the ``train.resume`` checkpoint `resumed` stopped (optimizer, GradScaler, epoch, step, best
    score, schedule, RNG states), or count ``train.weight``'s weights as trained for `start_epoch` epochs."""
    t = run.cfg.train
    rng_state = None
    if resumed is not None:
        try:
            run.optimizer.load_state_dict(resumed["optimizer"])
        except (ValueError, KeyError) as exc:
            raise ValueError(f"{t.resume}: its optimizer state does not fit this run's optimizer ({exc})") from None
        if run.scaler.is_enabled() and resumed.get("scaler"):  # a run without fp16 saved an empty state
            run.scaler.load_state_dict(resumed["scaler"])
        run.epoch = int(resumed["epoch"])
        run.step = int(resumed.get("step", run.epoch * run.steps_per_epoch))
        run.best_score = float(resumed.get("best_score", -math.inf))
        run.history = dict(resumed.get("metrics") or {})
        rng_state = resumed.get("rng")
        logger.info("resumed from %s at epoch %d, step %d", t.resume, run.epoch, run.step)
        if run.info.is_main:
            trim_metrics(run.metrics_path, run.step, run.epoch)
            complete_best(run.run_dir, Path(t.resume), run.history)
    elif start_epoch:
        run.epoch, run.step = int(start_epoch), int(start_epoch) * run.steps_per_epoch
    # the schedule stands at the optimizer steps taken: fewer than `run.step` when the GradScaler skipped some
    schedule_step = ((resumed or {}).get("scheduler") or {}).get("last_epoch", run.step)
    run.scheduler = build_scheduler(run.cfg, run.optimizer, run.steps_per_epoch, step=int(schedule_step))
    if run.epoch >= t.epochs:
        logger.warning("nothing to train: the checkpoint has %d epochs, train.epochs is %d", run.epoch, t.epochs)
    if rng_state is not None:
        set_rng_state(rng_state)
    if run.info.rank:
        seed_everything(t.seed + 1000 * run.info.rank + run.epoch)  # different augmentation streams per rank


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


# ---- an epoch of a run ------------------------------------------------------------------------------
def _log_step(run: _Run, record: dict[str, Any]) -> None:
    record["images_per_s"] *= run.info.world_size  # every process trains on as many images
    if run.info.is_main:
        append_jsonl(run.metrics_path, record)
        run.tracker.log({f"train/{k}": v for k, v in record.items() if k not in ("kind", "time")}, step=record["step"])


def _train(run: _Run, epoch: int) -> dict[str, Any]:
    """Train epoch `epoch` (0-based); returns its ``kind="epoch"`` record with the training averages."""
    t = run.cfg.train
    run.train_loader.sampler.set_epoch(epoch)  # order and augmentation from (seed, epoch): see SeededSampler
    stats = train_one_epoch(
        run.train_model,
        run.loss_fn,
        run.train_loader,
        run.optimizer,
        device=run.device,
        epoch=epoch,
        epochs=t.epochs,
        scheduler=run.scheduler,
        scaler=run.scaler,
        amp_dtype=run.amp_dtype,
        grad_clip=t.grad_clip,
        channels_last=run.channels_last,
        max_steps=t.max_steps_per_epoch,
        start_step=run.step,
        log_every=min(LOG_EVERY, run.steps_per_epoch),
        log_fn=lambda record: _log_step(run, record),
        progress=t.progress and run.info.is_main,
    )
    run.step += int(stats["steps"])
    stats["images"] *= run.info.world_size
    stats["images_per_s"] *= run.info.world_size
    return {"kind": "epoch", "epoch": epoch + 1, "step": run.step, **{f"train_{k}": v for k, v in stats.items()}}


def _validate(run: _Run, epoch: int) -> dict[str, Any]:
    """The validation loss and AP after epoch `epoch` (``val_*``): on rank 0, every ``train.eval_every`` epochs
    and after the last one; nothing otherwise."""
    cfg, t = run.cfg, run.cfg.train
    due = (epoch + 1) % t.eval_every == 0 or epoch + 1 == t.epochs
    if not (run.info.is_main and run.val_loader is not None and due):
        return {}
    result = evaluate(
        run.model,
        run.val_loader,
        cfg.eval,
        device=run.device,
        loss_fn=run.loss_fn,
        variances=tuple(cfg.anchors.variances),
        cls_loss=cfg.loss.cls_loss,
        amp_dtype=run.amp_dtype,
        channels_last=run.channels_last,
        keep_samples=PREVIEW_IMAGES if run.tracker.enabled else 0,
        progress=t.progress,
    )
    run.train_model.train()
    _log_previews(run.tracker, cfg, result.pop("samples"), run.step, getattr(run.model, "latent_stride", 1))
    return {k if k.startswith("val_") else f"val_{k}": v for k, v in result.items()}


def _log_previews(tracker: Tracker, cfg: Config, samples: list[dict[str, Any]], step: int, latent_stride: int) -> None:
    if not tracker.enabled or not samples:
        return
    images, dets, gts, captions = [], [], [], []
    for sample in samples:
        images.append(preview_picture(sample["input"], cfg.model, latent_stride=latent_stride))
        keep = sample["detections"]["scores"] >= 0.5
        dets.append({k: v[keep] for k, v in sample["detections"].items()})
        gts.append(sample["gt_boxes"])
        captions.append(sample["name"])
    tracker.log_detections("val/detections", images, dets, gts, captions=captions, step=step)


def _score(record: Mapping[str, Any], key: str) -> float | None:
    """Higher-is-better score of an epoch record: validation AP, or minus the training loss."""
    if key == "val_ap":
        value = record.get("val_ap")
        if value is None or not math.isfinite(value):
            value = -record["val_loss"] if "val_loss" in record else None
        return value
    return -float(record["train_loss"])


def _save(run: _Run, epoch: int, record: dict[str, Any]) -> None:
    """End epoch `epoch` in the order the module docstring gives: checkpoint, metrics line, ``last.pth``, then
    ``best.pth`` when the epoch is the best so far."""
    t = run.cfg.train
    score = _score(record, run.best_key)
    improved = score is not None and score > run.best_score
    if improved:
        run.best_score = score
    record["best"] = improved
    run.epoch = epoch + 1
    if not run.info.is_main:
        return
    run.history = {k: v for k, v in record.items() if k != "kind"}
    extra = {"step": run.step, "best_score": run.best_score, "best_key": run.best_key, "rng": get_rng_state()}
    epoch_path = run.run_dir / f"epoch_{epoch + 1:03d}.pth"
    training_state = {"optimizer": run.optimizer, "scaler": run.scaler, "scheduler": run.scheduler}
    save_checkpoint(
        epoch_path, model=run.model, config=run.cfg, epoch=epoch + 1, **training_state, metrics=run.history, **extra
    )
    append_jsonl(run.metrics_path, {**record, "time": time.time()})
    atomic_copy(epoch_path, run.run_dir / "last.pth")
    if improved:
        atomic_copy(epoch_path, run.run_dir / "best.pth")
    if t.keep_epochs is not None:
        prune_epoch_files(run.run_dir, keep=t.keep_epochs)
    run.tracker.log({f"epoch/{k}": v for k, v in record.items() if k != "kind"}, step=run.step)
    keys = ("train_loss", "train_pos_per_image", "train_images_per_s", "val_loss", "val_ap_face", "val_ap_person")
    line = ", ".join(f"{k}={record[k]:.4g}" for k in keys if isinstance(record.get(k), (int, float)))
    logger.info("epoch %d/%d: %s", epoch + 1, t.epochs, line)


def _finish(run: _Run) -> None:
    """The final weights, the best checkpoint as a tracked artifact, and the run's summary (rank 0)."""
    if not run.info.is_main:
        return
    save_checkpoint(
        run.run_dir / "weight_final.pth", model=run.model, config=run.cfg, epoch=run.epoch, metrics=run.history
    )
    best = run.run_dir / "best.pth"
    if best.is_file():
        metadata = {"best_key": run.best_key, "best_score": run.best_score, "preset": run.cfg.preset}
        run.tracker.log_checkpoint(best, name=f"{run.run_dir.name}-best", aliases=("best", "latest"), metadata=metadata)
    run.tracker.summary({"best_key": run.best_key, "best_score": run.best_score})


# ---- the whole run ----------------------------------------------------------------------------------
def fit(cfg: Config, *, start_epoch: int | None = None) -> Path:
    """Train `cfg` and return the run folder (see the module docstring).

    `start_epoch`: with ``train.weight``, count the weights as trained for this many epochs (the schedule starts
    there; the ancestors' ``--resume_epoch``); ignored when resuming. Raises `FloatingPointError` on a non-finite
    loss, `RunFolderBusy` when another live run holds the folder, `FileNotFoundError` / `ValueError` for a bad
    dataset, checkpoint or configuration.
    """
    device, info = _training_device(cfg.train.device)
    cfg = resolve_dataset_root_config(cfg, info)
    cfg, run_dir, held = claim_run_folder(cfg, info)
    with held or contextlib.nullcontext():
        refuse_earlier_run(run_dir, cfg.train.resume, info)
        model, resumed = _start_model(cfg)  # the checkpoints fit the model before anything is written
        _start_run_folder(cfg, run_dir, info, model, device)
        run = _set_up(cfg, run_dir, info, device, model)
        try:
            _restore(run, resumed, start_epoch)
            for epoch in range(run.epoch, cfg.train.epochs):
                record = _train(run, epoch)
                record.update(_validate(run, epoch))
                _save(run, epoch, record)
                barrier()
            _finish(run)
            barrier()
        finally:
            run.tracker.finish()
    return run_dir
