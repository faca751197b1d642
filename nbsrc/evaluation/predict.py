"""Dataset-wide detection: run a checkpoint over a split and write one WIDER result file per image.

Boxes are decoded in the network frame (`nbsrc.postprocess.postprocess`) and mapped back to original-image
pixels with each sample's `nbsrc.frame.FrameMap`. RGB models follow ``eval.test_scale``: ``square`` resizes to
``data.image_size``; ``original`` and ``mxnet`` are biubug6's ``test_widerface.py`` protocols, one image per
batch (`nbsrc.frame.ScaleMap`).

Files are written atomically to ``<out>/<event>/<basename>.txt``, so a stopped run resumes where it was.
``<out>/predictions.json`` records what made the files (weights digest, model, anchor and frame settings, dataset,
thresholds, image names); a later run with other settings removes the old files and predicts every image again,
so a folder never mixes two settings' detections. An image that fails to load (``data.on_error=skip``) gets no
file and is named in `PredictStats.left_out`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm  # plain bars: readable in notebooks and papermill logs alike

from nbsrc.data.collate import detection_collate
from nbsrc.data.layout import scan_latents
from nbsrc.data.loaders import build_dataset
from nbsrc.evaluation.results import MANIFEST, result_path, write_wider_results
from nbsrc.postprocess import postprocess
from nbsrc.runs import remove_stale_temp_files
from nbsrc.utils import atomic_write_text, tqdm_kwargs

__all__ = [
    "MANIFEST",
    "PredictStats",
    "available_rates",
    "build_predict_dataset",
    "predict_dataset",
    "predict_split",
]

logger = logging.getLogger(__name__)

_FRAME_KEYS = ("image_size", "label_frame", "resize_policy", "sizes_csv", "normalize_latents")  # data keys that matter


@dataclass
class PredictStats:
    """What a prediction run did; times are ms per image of this run."""

    out_dir: Path
    images: int = 0  # images in the dataset
    written: int = 0  # result files written by this run
    skipped: int = 0  # images whose file existed (resume)
    detections: int = 0
    forward_ms: float = 0.0
    postprocess_ms: float = 0.0  # decode + NMS
    write_ms: float = 0.0  # frame mapping + file writing
    unmapped: int = 0  # images left in the network frame (no frame map)
    names: list[str] = field(default_factory=list)  # the dataset's "<event>/<basename>": what an evaluation covers
    labelled: int | None = None  # images in the split's labels (more than `images` under data.max_images)
    max_images: int | None = None  # data.max_images
    left_out: list[str] = field(default_factory=list)  # images that failed to load: no result file

    @property
    def capped(self) -> bool:
        """Whether ``max_images`` left images of the split out."""
        return self.labelled is not None and self.labelled > self.images

    @property
    def postprocess_share(self) -> float:
        """Post-processing time as a fraction of forward + post-processing."""
        total = self.forward_ms + self.postprocess_ms
        return self.postprocess_ms / total if total > 0 else 0.0

    def summary(self) -> str:
        cap = (
            f"predicted {self.images} of {self.labelled} images (max_images={self.max_images}); " if self.capped else ""
        )
        failed = f", {len(self.left_out)} left out (failed to load)" if self.left_out else ""
        return (
            f"{self.out_dir}: {cap}{self.written} written, {self.skipped} skipped (existing){failed}, "
            f"{self.detections} detections; forward {self.forward_ms:.2f} ms/image, post-processing "
            f"{self.postprocess_ms:.2f} ms/image ({100 * self.postprocess_share:.0f}% of model time), writing "
            f"{self.write_ms:.2f} ms/image"
        )

    def to_dict(self) -> dict:
        return {
            "out_dir": str(self.out_dir),
            "images": self.images,
            "written": self.written,
            "skipped": self.skipped,
            "detections": self.detections,
            "forward_ms_per_image": self.forward_ms,
            "postprocess_ms_per_image": self.postprocess_ms,
            "write_ms_per_image": self.write_ms,
            "postprocess_share": self.postprocess_share,
            "unmapped": self.unmapped,
            "labelled": self.labelled,
            "max_images": self.max_images,
            "left_out": list(self.left_out),
        }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-1 of a model's state dict (names, dtypes, shapes and bytes): which weights made a set of predictions."""
    digest = hashlib.sha1()
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _dataset_digest(dataset) -> str:
    """SHA-1 of what a dataset's images are read from: its kind, root, rate points and latent normalization
    statistics (not how many images it holds: one more image changes no other image's detections)."""
    digest = hashlib.sha1(f"{type(dataset).__name__}:{getattr(dataset, 'root', '')}".encode())
    rates = sorted({str(getattr(sample, "rate", None)) for sample in getattr(dataset, "samples", ())})
    digest.update(f"rates:{','.join(rates)};".encode())
    for rate, stats in sorted((getattr(dataset, "stats", None) or {}).items(), key=lambda kv: str(kv[0])):
        digest.update(f"{rate}:{stats.fingerprint}:".encode())
        digest.update(torch.as_tensor(stats.mean).float().numpy().tobytes())
        digest.update(torch.as_tensor(stats.std).float().numpy().tobytes())
    return digest.hexdigest()


def _read_manifest(path: Path) -> dict | None:
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        logger.warning("%s: unreadable (%s); the folder's predictions count as made with other settings", path, err)
        return {"settings": {}, "names": []}
    if not isinstance(manifest, dict) or not isinstance(manifest.get("names"), list):
        return {"settings": {}, "names": []}
    return manifest


def _prepare_folder(out_dir: Path, settings: dict, names: list[str], resume: bool) -> bool:
    """Make `out_dir` hold only predictions made with `settings`; returns whether existing files may be kept.

    A folder made with other settings (or with ``resume=False``) loses the result files its manifest lists. A
    folder without a manifest keeps its files, but none of them is trusted: every image is predicted again.
    """
    manifest_path = out_dir / MANIFEST
    old = _read_manifest(manifest_path)
    settings = json.loads(json.dumps(settings, default=str))  # as it reads back from the file
    keep = resume
    if old is not None and (not resume or old.get("settings") != settings):
        if resume:
            before = old.get("settings") or {}
            changed = sorted(k for k in before.keys() | settings.keys() if before.get(k) != settings.get(k))
            logger.warning(
                "%s: its predictions were made with other %s: removing them and predicting every image again",
                out_dir,
                ", ".join(changed) or "settings",
            )
        paths = [result_path(out_dir, name) for name in old["names"]]
        removed = {path for path in paths if path.is_file()}
        for path in removed:
            path.unlink()
        for folder in sorted({path.parent for path in paths}, reverse=True):
            if folder != out_dir and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        if removed:
            logger.info("%s: %d old result files removed", out_dir, len(removed))
        keep = False
    elif old is None and resume and any(result_path(out_dir, n).is_file() for n in names):
        logger.warning(
            "%s: result files without %s (settings unknown): predicting every image again", out_dir, MANIFEST
        )
        keep = False
    if keep and old is not None:  # the same settings: earlier images stay listed
        names = list(dict.fromkeys([*old["names"], *names]))
    atomic_write_text(manifest_path, json.dumps({"settings": settings, "names": names}) + "\n")
    return keep


def predict_dataset(
    detector,
    dataset,
    out_dir: str | Path,
    *,
    conf: float = 0.02,
    nms: float = 0.4,
    top_k: int | None = None,
    keep_top_k: int | None = None,
    batch_size: int = 8,
    num_workers: int = 0,
    amp: bool = True,
    resume: bool = True,
    progress: bool = True,
    decimals: int = 2,
) -> PredictStats:
    """Run a `nbsrc.detector.Detector` over every sample of an evaluation-mode `dataset` and write WIDER result
    files in original-image pixels.

    Args:
        conf, nms: score and NMS IoU thresholds (0.02 and 0.4, the published evaluation settings).
        top_k, keep_top_k: candidates before NMS and detections kept per image (default: the config's ``eval``).
        batch_size: images per forward pass (1 when the dataset's ``test_scale`` is not ``square``).
        amp: float16 autocast on CUDA.
        resume: skip images whose result file was made with the same weights and settings; False removes the
            folder's earlier predictions.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [str(n) for n in dataset.names]
    remove_stale_temp_files(out_dir, {result_path(out_dir, n).parent for n in names})  # left by a killed run
    model, cfg, device = detector.model, detector.cfg, detector.device
    post = {  # `nbsrc.postprocess.postprocess` arguments
        "conf_thresh": conf,
        "nms_thresh": nms,
        "top_k": cfg.eval.top_k if top_k is None else top_k,
        "keep_top_k": cfg.eval.keep_top_k if keep_top_k is None else keep_top_k,
        "variances": cfg.anchors.variances,
        "cls_loss": cfg.loss.cls_loss,
    }
    use_amp = amp and device.type == "cuda"
    settings = _settings(model, cfg, dataset, post, use_amp, decimals)
    test_scale = getattr(dataset, "test_scale", "square")
    if test_scale != "square":  # square folders (made before test_scale existed) stay resumable
        settings["test_scale"] = test_scale
        if batch_size > 1:
            logger.info("test_scale %s: images differ in size, predicted one per batch", test_scale)
        batch_size = 1
    resume = _prepare_folder(out_dir, settings, names, resume)
    todo = [i for i, n in enumerate(names) if not (resume and result_path(out_dir, n).is_file())]
    stats = _start_stats(out_dir, dataset, names, len(todo))
    if not todo:
        return stats

    loader = DataLoader(
        Subset(dataset, todo),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=detection_collate,
        pin_memory=device.type == "cuda",
    )
    class_column = getattr(model, "num_classes", 2) > 2  # 2-class models
    forward_s = post_s = write_s = 0.0
    bar = tqdm(total=len(todo), desc=f"predict {out_dir.name}", unit="img", **tqdm_kwargs(progress))
    model.eval()
    with torch.inference_mode():
        for batch in loader:
            if batch is None:  # every image of the batch failed to load (data.on_error=skip; logged)
                continue
            detections, forward, postprocessing = _detect_batch(model, device, batch["inputs"], use_amp, post)
            t0 = time.perf_counter()
            _write_batch(stats, batch, detections, class_column, decimals)
            forward_s += forward
            post_s += postprocessing
            write_s += time.perf_counter() - t0
            stats.written += len(batch["names"])
            bar.update(len(batch["names"]) + batch.get("left_out", 0))
    bar.close()
    _finish_stats(stats, [names[i] for i in todo], forward_s, post_s, write_s)
    return stats


def _settings(model: torch.nn.Module, cfg, dataset, post: dict, use_amp: bool, decimals: int) -> dict:
    """What makes a folder's predictions (``predictions.json``)."""
    config = cfg.to_dict()
    settings = {
        "weights": weights_digest(model),
        "model": config["model"],
        "anchors": config["anchors"],
        "data": {k: config["data"][k] for k in _FRAME_KEYS},
        "dataset": _dataset_digest(dataset),
        "conf": post["conf_thresh"],
        "nms": post["nms_thresh"],
        "top_k": post["top_k"],
        "keep_top_k": post["keep_top_k"],
        "amp": use_amp,
        "decimals": decimals,
    }
    if cfg.loss.cls_loss != "ohem":  # softmax-scored folders stay resumable; older softmax-scored focal ones do not
        settings["cls_loss"] = cfg.loss.cls_loss
    return settings


def _start_stats(out_dir: Path, dataset, names: list[str], todo: int) -> PredictStats:
    """The `PredictStats` of a run that predicts `todo` of the images `names`; a cap and skipped images logged."""
    stats = PredictStats(out_dir=out_dir, images=len(names), skipped=len(names) - todo, names=names)
    stats.labelled = getattr(dataset, "labelled_images", None)
    stats.max_images = getattr(dataset, "max_images", None)
    if stats.capped:
        logger.warning(
            "%s: predicting %d of the %d labelled images (max_images=%d): an evaluation of this folder covers "
            "those only",
            out_dir,
            len(names),
            stats.labelled,
            stats.max_images,
        )
    if stats.skipped:
        logger.info("%s: %d of %d images already written, skipped", out_dir, stats.skipped, len(names))
    return stats


def _detect_batch(
    model: torch.nn.Module, device: torch.device, inputs: torch.Tensor, use_amp: bool, post: dict
) -> tuple[list[dict], float, float]:
    """``(detections per image in the network frame, forward seconds, post-processing seconds)`` of one batch."""
    inputs = inputs.to(device, non_blocking=True)
    _sync(device)
    t0 = time.perf_counter()
    with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
        outputs = model(inputs)
    _sync(device)
    t1 = time.perf_counter()
    outputs = {k: (v.float() if v is not None else None) for k, v in outputs.items()}
    detections = postprocess(outputs, model.anchors(inputs), model.image_size(inputs), **post)
    _sync(device)
    t2 = time.perf_counter()
    return detections, t1 - t0, t2 - t1


def _write_batch(stats: PredictStats, batch: dict, detections: list[dict], class_column: bool, decimals: int) -> None:
    """One result file per image of `batch`, boxes mapped to original-image pixels."""
    for name, frame, det in zip(batch["names"], batch["frames"], detections):
        boxes = det["boxes"].float().cpu().numpy().reshape(-1, 4)  # (N, 4) network frame
        if frame is not None:
            boxes = frame.to_original(boxes) if len(boxes) else boxes
        else:
            stats.unmapped += 1
        scores = det["scores"].float().cpu().numpy()  # (N,)
        labels = det["labels"].cpu().numpy() if class_column else None  # (N,)
        write_wider_results(stats.out_dir, name, boxes, scores, labels=labels, decimals=decimals)
        stats.detections += len(scores)


def _finish_stats(stats: PredictStats, todo: list[str], forward_s: float, post_s: float, write_s: float) -> None:
    """Images of `todo` left without a result file and times per image into `stats`; the summary logged."""
    out_dir = stats.out_dir
    stats.left_out = [name for name in todo if not result_path(out_dir, name).is_file()]
    if stats.left_out:
        logger.warning(
            "%s: %d image(s) failed to load and have no result file (data.on_error=skip), e.g. %s",
            out_dir,
            len(stats.left_out),
            ", ".join(stats.left_out[:5]),
        )
    n = max(stats.written, 1)
    stats.forward_ms, stats.postprocess_ms, stats.write_ms = 1e3 * forward_s / n, 1e3 * post_s / n, 1e3 * write_s / n
    if stats.unmapped:
        logger.warning(
            "%s: %d image(s) had no frame map (labels given in the network frame): their boxes stay in network-frame"
            " pixels",
            out_dir,
            stats.unmapped,
        )
    logger.info("%s", stats.summary())


def available_rates(dataset_root: str | Path, split: str = "val") -> list[int]:
    """JPEG AI rates (``latent_<rate>.npy`` suffixes) present in ``<root>/<split>/latent``, ascending."""
    index = scan_latents(Path(dataset_root) / split / "latent", suffix=None)
    return [r for r in index.rates if r is not None]


def build_predict_dataset(cfg, dataset_root: str | Path, split: str, latent_suffix: str | None = None):
    """The evaluation-mode dataset of `split` for a model config (latent normalization statistics from the
    training split when the model uses them and it exists; RGB input sized by ``cfg.eval.test_scale``)."""
    overrides = {"data.dataset_root": str(dataset_root), "data.all_rates": False, "data.augment": False}
    trained_on = cfg.data.dataset_root
    if trained_on is None or Path(trained_on).resolve() != Path(dataset_root).resolve():
        # label files named for training (data.train_labels / val_labels) belong to the training dataset
        overrides.update({"data.train_labels": None, "data.val_labels": None})
    if latent_suffix is not None:
        overrides["data.latent_suffix"] = latent_suffix
    cfg = cfg.replace(**overrides)
    extra = {}
    if cfg.model.input_kind != "latent":
        extra["test_scale"] = cfg.eval.test_scale
    elif cfg.eval.test_scale != "square":
        logger.warning(
            "eval.test_scale=%s applies to RGB models only: latents are predicted in their own frame",
            cfg.eval.test_scale,
        )
    if cfg.model.input_kind == "latent" and cfg.data.normalize_latents:
        train_dir = Path(dataset_root) / cfg.data.train_split
        if train_dir.is_dir() and cfg.data.train_split != split:
            # statistics only: its latents are read for them (a bad one raises there), so no value check
            train_set = build_dataset(cfg, cfg.data.train_split, train=False, check_values=False, max_images=None)
            if train_set.stats is not None:
                extra["stats"] = train_set.stats
        else:
            logger.warning("no training split: latent statistics computed on %s", split)
    return build_dataset(cfg, split, train=False, **extra)


def predict_split(
    detector,
    dataset_root: str | Path,
    out_dir: str | Path,
    *,
    split: str = "val",
    latent_suffix: str | None = None,
    all_rates: bool = False,
    rates: Sequence[int] | None = None,
    **kwargs,
) -> dict[str, PredictStats]:
    """Predict a split: ``{result sub-folder ("" for a single run): PredictStats}``. Latent models: one rate
    (``latent_suffix``, default the config's) into `out_dir`, or every available rate (`all_rates`, or the given
    `rates`) into ``<out_dir>/latent_<rate>/``."""
    out_dir = Path(out_dir)
    if detector.model.input_kind != "latent" or not (all_rates or rates):
        ds = build_predict_dataset(detector.cfg, dataset_root, split, latent_suffix)
        return {"": predict_dataset(detector, ds, out_dir, **kwargs)}
    chosen = list(rates) if rates else available_rates(dataset_root, split)
    if not chosen:
        raise FileNotFoundError(f"{Path(dataset_root) / split / 'latent'}: no latent_<rate>.npy files")
    results = {}
    for rate in chosen:
        ds = build_predict_dataset(detector.cfg, dataset_root, split, f"latent_{rate}.npy")
        results[f"latent_{rate}"] = predict_dataset(detector, ds, out_dir / f"latent_{rate}", **kwargs)
    return results
