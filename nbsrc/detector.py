"""`Detector`: a trained model plus its config, turned into a small detection API.

``Detector.from_checkpoint(path).detect(image_rgb_uint8)`` returns plain Python detections in original-image
pixels. RGB images run at their own size; a latent runs in the network frame it describes (``h * latent_stride`` x
``w * latent_stride``), mapped back to an original image size when given.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from nbsrc.config import Config, EvalConfig
from nbsrc.export import OnnxRuntimeModel
from nbsrc.frame import FrameMap
from nbsrc.latents import as_latent
from nbsrc.model.loading import load_model
from nbsrc.postprocess import postprocess
from nbsrc.preprocess import normalize_image
from nbsrc.utils import select_device
from nbsrc.weights import PUBLISHED_DETECTOR, PUBLISHED_PRESET

__all__ = ["DetectionModel", "Detector", "check_thresholds"]

logger = logging.getLogger(__name__)

# argument -> the `EvalConfig` field whose range it must respect
_THRESHOLD_FIELDS = {"conf": "conf_thresh", "nms": "nms_thresh", "top_k": "top_k", "keep_top_k": "keep_top_k"}


def check_thresholds(names: Mapping[str, str] | None = None, **values: Any) -> None:
    """Raise `ValueError` unless each of ``conf``, ``nms``, ``top_k``, ``keep_top_k`` given (not None) is in its
    `EvalConfig` range; `names` says how the message names each (e.g. ``{"conf": "--conf"}``)."""
    names = names or {}
    for key, value in values.items():
        if value is None:
            continue
        name = names.get(key, key)
        if key in ("top_k", "keep_top_k") and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        try:
            EvalConfig(**{_THRESHOLD_FIELDS[key]: value})
        except TypeError:
            raise ValueError(f"{name} must be a number, got {value!r}") from None
        except ValueError as exc:  # "config key 'eval.conf_thresh': must be in [0, 1]"
            raise ValueError(f"{name} {str(exc).rsplit(': ', 1)[-1]}, got {value!r}") from None


class DetectionModel(Protocol):
    """What `Detector` uses of its model: a `nbsrc.model.RetinaFace`, or `nbsrc.export.OnnxRuntimeModel`, whose
    ``conf_scored`` (default False) says that ``conf`` holds class probabilities rather than logits."""

    input_kind: str  # rgb | latent
    in_channels: int
    latent_stride: int

    def image_size(self, x: Tensor) -> tuple[int, int]: ...

    def anchors(self, x: Tensor) -> Tensor: ...

    def __call__(self, x: Tensor) -> dict[str, Tensor | None]: ...


class Detector:
    """Run a RetinaFace model (moved to `device` and put in eval mode; another `DetectionModel` is used as it is)
    with its config on images or latents. `device`: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``."""

    def __init__(self, model: nn.Module | DetectionModel, cfg: Config, device: str | torch.device = "cpu") -> None:
        self.device = select_device(device) if isinstance(device, str) else torch.device(device)
        self.model = model.to(self.device).eval() if isinstance(model, nn.Module) else model
        self.cfg = cfg

    @classmethod
    def from_checkpoint(cls, path: str | Path, preset: str | None = None, device: str = "cpu") -> Detector:
        """Our checkpoint or a published state dict (`nbsrc.model.loading.load_model`), with its config for
        prediction (`nbsrc.config.Config.for_prediction`)."""
        model, cfg = load_model(path, preset=preset, device="cpu")
        return cls(model, cfg.for_prediction(), device)

    @classmethod
    def from_onnx(
        cls, path: str | Path, preset: str | None = None, device: str = "cpu", threads: int | None = None
    ) -> Detector:
        """An ONNX file written by ``python -m nbsrc export``, run with onnxruntime (a GPU `device` needs
        onnxruntime-gpu; post-processing runs on the CPU): the same `detect` results as the checkpoint it was
        exported from. A `preset` given must be the file's."""
        model = OnnxRuntimeModel(path, threads=threads, device=device)
        if preset is not None and preset != model.cfg.preset:
            raise ValueError(f"{path}: this is an export of preset '{model.cfg.preset}', not '{preset}'")
        return cls(model, model.cfg, "cpu")

    @classmethod
    def published(cls, device: str = "cpu") -> Detector:
        """The published RetinaFace MobileNet-0.25 detector (``mnet-biubug6``; WIDER val AP 90.70 / 88.16 / 73.82)
        shipped in `nbsrc.weights`."""
        return cls.from_checkpoint(PUBLISHED_DETECTOR, preset=PUBLISHED_PRESET, device=device)

    @property
    def input_kind(self) -> str:
        return self.model.input_kind

    # ---- inputs ---------------------------------------------------------------------------------------
    def prepare(self, item: Any, source: str = "input") -> Tensor:
        """One image ``[H, W, 3]`` uint8 RGB or one latent (``[C, h, w]`` / ``[1, C, h, w]``) -> ``Tensor[C, H, W]``;
        a `ValueError` names `source` and what was expected."""
        if isinstance(item, Tensor):
            item = item.detach().cpu().numpy()
        if not isinstance(item, np.ndarray):
            raise ValueError(f"{source}: expected a numpy array, got {type(item).__name__}")
        if self.input_kind == "latent":
            return torch.from_numpy(np.ascontiguousarray(as_latent(item, self.model.in_channels, source)))
        if item.ndim != 3 or item.shape[2] != 3:
            hint = " (this model takes RGB images; latents need a latent preset)" if item.ndim in (3, 4) else ""
            raise ValueError(f"{source}: expected an RGB image [H, W, 3] uint8, got shape {list(item.shape)}{hint}")
        if item.dtype != np.uint8:
            raise ValueError(f"{source}: expected an RGB image of dtype uint8 (0..255), got {item.dtype}")
        m = self.cfg.model
        return normalize_image(item, m.channel_order, m.pixel_mean, m.pixel_std)

    # ---- batched prediction -----------------------------------------------------------------------
    @torch.inference_mode()
    def predict_batch(
        self,
        inputs: Tensor,
        conf: float | None = None,
        nms: float | None = None,
        top_k: int | None = None,
        keep_top_k: int | None = None,
    ) -> list[dict[str, Tensor | None]]:
        """`nbsrc.postprocess.postprocess` output for a prepared batch ``Tensor[B, C, H, W]``: boxes and landmarks in
        network-frame pixels, scores as ``cfg.loss.cls_loss`` trained them. Unset thresholds come from ``cfg.eval``.
        """
        check_thresholds(conf=conf, nms=nms, top_k=top_k, keep_top_k=keep_top_k)
        e = self.cfg.eval
        inputs = inputs.to(self.device, non_blocking=True)
        outputs = self.model(inputs)
        return postprocess(
            outputs,
            self.model.anchors(inputs),
            self.model.image_size(inputs),
            conf_thresh=e.conf_thresh if conf is None else conf,
            nms_thresh=e.nms_thresh if nms is None else nms,
            top_k=e.top_k if top_k is None else top_k,
            keep_top_k=e.keep_top_k if keep_top_k is None else keep_top_k,
            variances=self.cfg.anchors.variances,
            cls_loss="probabilities" if getattr(self.model, "conf_scored", False) else self.cfg.loss.cls_loss,
        )

    # ---- user API -------------------------------------------------------------------------------------
    def detect(
        self, item: Any, conf: float = 0.5, nms: float = 0.4, orig_size: tuple[int, int] | None = None
    ) -> list[dict[str, Any]]:
        """Detections of one ``[H, W, 3]`` uint8 RGB image or latent, by descending score:
        ``[{"box": (x1, y1, x2, y2), "score": float, "label": int, "landmarks": [[x, y]] * 5 | None}]``.

        `orig_size` (latent models only): ``(width, height)`` of the original image, to which boxes are mapped from
        the network frame with the config's resize policy; None keeps the network frame.
        """
        return self.detect_batch([item], conf=conf, nms=nms, orig_sizes=[orig_size])[0]

    def detect_batch(
        self,
        items: Sequence[Any],
        conf: float = 0.5,
        nms: float = 0.4,
        orig_sizes: Sequence[tuple[int, int] | None] | None = None,
    ) -> list[list[dict[str, Any]]]:
        """`detect` for several inputs; inputs of equal shape run as one batch."""
        check_thresholds(conf=conf, nms=nms)  # before any work on the inputs
        if orig_sizes is None:
            orig_sizes = [None] * len(items)
        if len(orig_sizes) != len(items):
            raise ValueError(f"{len(items)} inputs but {len(orig_sizes)} orig_sizes")
        tensors = [self.prepare(item, f"input {i}") for i, item in enumerate(items)]
        results: list[list[dict[str, Any]] | None] = [None] * len(items)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, tensor in enumerate(tensors):
            by_shape.setdefault(tuple(tensor.shape), []).append(index)
        batch_size = self.cfg.eval.batch_size
        for indices in by_shape.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                # (B, C, H, W); one input is not copied
                batch = torch.stack([tensors[i] for i in chunk]) if len(chunk) > 1 else tensors[chunk[0]][None]
                height, width = self.model.image_size(batch)
                predictions = self.predict_batch(batch, conf=conf, nms=nms)
                for i, prediction in zip(chunk, predictions):
                    results[i] = self._to_python(prediction, (width, height), orig_sizes[i])
        return results  # type: ignore[return-value]

    def _to_python(
        self, prediction: dict[str, Tensor | None], net_size: tuple[int, int], orig_size: tuple[int, int] | None
    ) -> list[dict[str, Any]]:
        boxes = prediction["boxes"].float().cpu().numpy()
        landmarks = prediction["landmarks"]
        points = landmarks.float().cpu().numpy() if landmarks is not None else None
        if orig_size is not None:
            if self.input_kind != "latent":
                raise ValueError("orig_size applies to latent models only (RGB images run at their own size)")
            frame = FrameMap(orig_size=tuple(orig_size), net_size=net_size, policy=self.cfg.data.resize_policy)
            boxes = frame.to_original(boxes)
            points = frame.to_original(points) if points is not None else None
        scores = prediction["scores"].float().cpu().numpy()
        labels = prediction["labels"].cpu().numpy()
        return [
            {
                "box": tuple(float(v) for v in boxes[i]),
                "score": float(scores[i]),
                "label": int(labels[i]),
                "landmarks": points[i].astype(float).tolist() if points is not None else None,
            }
            for i in range(len(scores))
        ]
