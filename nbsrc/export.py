"""Export a detector to ONNX or TorchScript, and run an exported ONNX file with onnxruntime.

The graph has biubug6's test-phase interface (``RetinaFace(phase="test")``), so code written for its ONNX exports
runs ours unchanged:

- input ``input0``: float32 ``[N, 3, H, W]`` for RGB models (`nbsrc.preprocess.normalize_image`) or
  ``[N, C, h, w]`` latents; batch and spatial size are dynamic.
- outputs: ``loc`` ``[N, A, 4]`` raw box regressions, ``conf`` ``[N, A, C]`` class probabilities (softmax, or a
  sigmoid per column for focal-loss models, `nbsrc.postprocess.class_scores`), and ``landmarks`` ``[N, A, 10]``
  when the model has a landmark head.

Decoding stays outside the graph (anchors depend on the input size): `anchors_for` gives an input's anchors, in
the order of the outputs. The config travels inside the file as `METADATA_KEYS` (read back by `read_metadata`,
`config_of`). `OnnxRuntimeModel` runs an ONNX file as the model of a `nbsrc.detector.Detector`.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import json
import logging
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nbsrc.anchors import AnchorGenerator
from nbsrc.config import Config
from nbsrc.model.loading import load_model
from nbsrc.utils import atomic_path

__all__ = [
    "CONFIG_KEY",
    "FORMATS",
    "INPUT_NAME",
    "METADATA_KEYS",
    "ExportModule",
    "OnnxRuntimeModel",
    "anchors_for",
    "config_of",
    "export_checkpoint",
    "export_model",
    "export_metadata",
    "format_of",
    "output_names",
    "read_metadata",
]

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
SUFFIXES = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript"}
INPUT_NAME = "input0"  # the name biubug6's convert_to_onnx.py gives its input
OPSET = 17
CONFIG_KEY = "nbsrc_config"
METADATA_KEYS = (CONFIG_KEY, "nbsrc_input", "nbsrc_outputs", "nbsrc_scores", "nbsrc_strides", "nbsrc_variances")
# after every export, per output: max |exported - pytorch| <= CHECK_TOL * max(1, max |pytorch|)
CHECK_TOL = 1e-4


class ExportModule(nn.Module):
    """A RetinaFace with the published test-phase outputs: ``(loc, conf probabilities[, landmarks])``; `cls_loss`
    (``ohem``: softmax, ``focal``: sigmoid per column) scores ``conf`` as the detector does."""

    def __init__(self, model: nn.Module, cls_loss: str = "ohem") -> None:
        super().__init__()
        if cls_loss not in ("ohem", "focal"):
            raise ValueError(f"cls_loss must be 'ohem' or 'focal', got {cls_loss!r}")
        self.model = model
        self.cls_loss = cls_loss

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        outputs = self.model(x)
        logits = outputs["conf"]  # (N, A, C)
        conf = torch.softmax(logits, dim=-1) if self.cls_loss == "ohem" else torch.sigmoid(logits)  # (N, A, C)
        if outputs["landm"] is None:
            return outputs["loc"], conf  # (N, A, 4), (N, A, C)
        return outputs["loc"], conf, outputs["landm"]  # ..., (N, A, 10)


def output_names(model: nn.Module) -> list[str]:
    """``["loc", "conf", "landmarks"]``, without ``landmarks`` for a model without a landmark head."""
    return ["loc", "conf", "landmarks"] if model.has_landmarks else ["loc", "conf"]


def _input_text(model: nn.Module, cfg: Config) -> str:
    m = cfg.model
    if model.input_kind == "latent":
        return (
            f"{INPUT_NAME} float32 [N, {model.in_channels}, h, w]: a JPEG AI latent; the network frame is "
            f"h*{model.latent_stride} x w*{model.latent_stride} pixels"
        )
    return (
        f"{INPUT_NAME} float32 [N, 3, H, W]: {m.channel_order.upper()} pixels 0..255 minus {list(m.pixel_mean)}, "
        f"divided by {list(m.pixel_std)} (channels in that order)"
    )


def export_metadata(model: nn.Module, cfg: Config) -> dict[str, str]:
    """The `METADATA_KEYS` an exported file carries: the config and what its input and outputs mean."""
    return {
        CONFIG_KEY: json.dumps(cfg.to_dict()),
        "nbsrc_input": _input_text(model, cfg),
        "nbsrc_outputs": ",".join(output_names(model)),
        "nbsrc_scores": "softmax" if cfg.loss.cls_loss == "ohem" else "sigmoid",
        "nbsrc_strides": json.dumps(list(model.strides)),
        "nbsrc_variances": json.dumps(list(cfg.anchors.variances)),
    }


def format_of(out: str | Path, fmt: str | None = None) -> str:
    """The export format: `fmt` when given, else told by the suffix of `out` (`SUFFIXES`)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown export format {fmt!r} (expected one of {', '.join(FORMATS)})")
        return fmt
    suffix = Path(out).suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"{out}: cannot tell the export format from the suffix {suffix or '(none)'!r}; name the file "
            f"*.onnx or *.pt, or give the format ({', '.join(FORMATS)})"
        )
    return SUFFIXES[suffix]


def _check_out(out: Path) -> None:
    if out.is_dir():
        raise ValueError(f"{out}: is a directory (expected the path of the file to write)")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{out}: {parent} is a file (expected a directory)")
            break


def _sample_inputs(model: nn.Module, cfg: Config, size: tuple[int, int] | None) -> list[Tensor]:
    """Two inputs of different batch and odd spatial sizes: the first is traced, both are checked."""
    if model.input_kind == "latent":
        side = cfg.data.image_size // model.latent_stride
        height, width = size or (side, side)
        second = (max(2, height - 3), max(2, width + 5))
    else:
        height, width = size or (min(cfg.data.image_size, 640),) * 2
        second = (max(32, height - 37), max(32, width + 51))
    generator = torch.Generator().manual_seed(0)
    scale = 1.0 if model.input_kind == "latent" else 60.0  # about the spread of normalized RGB pixels
    shapes = [(1, model.in_channels, height, width), (2, model.in_channels, *second)]
    return [torch.randn(shape, generator=generator) * scale for shape in shapes]


def _compare(name: str, inputs: Tensor, exported: list[Any], reference: tuple[Tensor, ...], names: list[str]) -> float:
    """Largest |exported - reference| over the outputs; `RuntimeError` beyond `CHECK_TOL`."""
    worst = 0.0
    for label, got, want in zip(names, exported, reference):
        got = torch.as_tensor(got)
        if tuple(got.shape) != tuple(want.shape):
            raise RuntimeError(f"{name}: output {label} has shape {tuple(got.shape)}, PyTorch {tuple(want.shape)}")
        if want.numel() == 0:
            continue
        diff = float((got - want).abs().max())
        worst = max(worst, diff)
        if not diff <= CHECK_TOL * max(1.0, float(want.abs().max())):  # NaN fails too
            raise RuntimeError(
                f"{name}: output {label} differs from the PyTorch model by up to {diff:.3g} (outputs up to "
                f"{float(want.abs().max()):.3g}) for an input of shape {list(inputs.shape)}: the export is not faithful"
            )
    return worst


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    """No tracer warnings about the model's shape checks (they become constants; the sizes stay dynamic) nor
    TorchScript deprecation notices."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit\..* is deprecated.*")
        yield


def _onnx_export(module: ExportModule, sample: Tensor, names: list[str], latent: bool) -> bytes:
    spatial = ("latent_h", "latent_w") if latent else ("height", "width")
    dynamic = {INPUT_NAME: {0: "batch", 2: spatial[0], 3: spatial[1]}}
    dynamic.update({name: {0: "batch", 1: "anchors"} for name in names})
    kwargs: dict[str, Any] = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # the TorchScript-based exporter: no onnxscript needed, dynamic axes as given
    buffer = io.BytesIO()
    with _quiet_jit(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        torch.onnx.export(
            module,
            (sample,),
            buffer,
            input_names=[INPUT_NAME],
            output_names=names,
            dynamic_axes=dynamic,
            opset_version=OPSET,
            do_constant_folding=True,
            **kwargs,
        )
    return buffer.getvalue()


def _require(name: str, purpose: str) -> Any:
    """Import `name` (onnx, onnxruntime), or raise `RuntimeError` saying how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise RuntimeError(f"{name} is not installed ({purpose}): pip install {name}") from None


def _write_onnx(data: bytes, metadata: Mapping[str, str], out: Path) -> None:
    onnx = _require("onnx", "it writes ONNX files")
    proto = onnx.load_from_string(data)
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = "RetinaFace exported by nbsrc: " + metadata["nbsrc_input"]
    onnx.checker.check_model(proto)
    with atomic_path(out) as tmp:
        onnx.save(proto, str(tmp))


def _onnx_session(path: str | Path, threads: int | None = None, providers: list[str] | None = None) -> Any:
    ort = _require("onnxruntime", "it runs ONNX files")

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for a file it cannot load
        raise ValueError(f"{path}: not a loadable ONNX model ({type(exc).__name__}: {exc})") from None


@torch.no_grad()
def export_model(
    model: nn.Module,
    cfg: Config,
    out: str | Path,
    fmt: str | None = None,
    *,
    size: tuple[int, int] | None = None,
    check: bool = True,
) -> Path:
    """Write `model` (a `nbsrc.model.RetinaFace`, put in eval mode on the CPU) and its `cfg` as an ONNX or
    TorchScript file, atomically; returns `out`.

    Args:
        fmt: ``onnx`` or ``torchscript``; None: told by the suffix of `out` (`format_of`).
        size: ``(H, W)`` of the traced input (pixels, or latent cells); the file takes any size. Default:
            ``data.image_size`` (at most 640) square, or its latent.
        check: run the written file on the traced input and a second one (batch 2, another odd size); raise
            `RuntimeError` unless it gives the PyTorch model's outputs (within `CHECK_TOL`).
    """
    out = Path(out)
    fmt = format_of(out, fmt)
    _check_out(out)
    model = model.cpu().eval()
    module = ExportModule(model, cfg.loss.cls_loss).eval()
    names = output_names(model)
    metadata = export_metadata(model, cfg)
    samples = _sample_inputs(model, cfg, size)
    if fmt == "onnx":
        _write_onnx(_onnx_export(module, samples[0], names, model.input_kind == "latent"), metadata, out)
        if check:
            session = _onnx_session(out)
            worst = max(
                _compare(str(out), x, session.run(names, {INPUT_NAME: x.numpy()}), module(x), names) for x in samples
            )
    else:
        with _quiet_jit():
            traced = torch.jit.trace(module, (samples[0],), check_trace=False)
            with atomic_path(out) as tmp:
                torch.jit.save(traced, str(tmp), _extra_files=dict(metadata))
            if check:
                loaded = torch.jit.load(str(out), map_location="cpu")
                worst = max(_compare(str(out), x, list(loaded(x)), module(x), names) for x in samples)
    shape = "x".join(str(v) for v in samples[0].shape[1:])
    checked = f"; same outputs as PyTorch (max |diff| {worst:.2g})" if check else ""
    logger.info("%s: %s of preset %s, traced at %s, outputs %s%s", out, fmt, cfg.preset, shape, names, checked)
    return out


def export_checkpoint(
    weight: str | Path,
    out: str | Path,
    fmt: str | None = None,
    *,
    preset: str | None = None,
    size: tuple[int, int] | None = None,
    check: bool = True,
) -> Path:
    """`export_model` of a checkpoint (as `nbsrc.model.loading.load_model` loads it); the format and output path
    are checked before the weights are read."""
    out = Path(out)
    fmt = format_of(out, fmt)
    _check_out(out)
    model, cfg = load_model(weight, preset=preset, device="cpu")
    return export_model(model, cfg, out, fmt, size=size, check=check)


def _check_metadata(metadata: Mapping[str, str], path: Path) -> None:
    if CONFIG_KEY not in metadata:
        raise ValueError(
            f"{path}: holds no '{CONFIG_KEY}' metadata: not a file written by 'python -m nbsrc export' "
            "(export the checkpoint with it)"
        )


def read_metadata(path: str | Path) -> dict[str, str]:
    """The nbsrc metadata of an exported ONNX or TorchScript file (`ValueError` when `export_model` did not
    write it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: exported model file not found")
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head.startswith(b"PK"):  # a zip archive: TorchScript
        extra = dict.fromkeys(METADATA_KEYS, "")
        try:
            with _quiet_jit():
                torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"{path}: not a loadable TorchScript file ({exc})") from None
        metadata = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in extra.items() if v}
    else:
        metadata = dict(_onnx_session(path).get_modelmeta().custom_metadata_map)
    _check_metadata(metadata, path)
    return metadata


def config_of(metadata: Mapping[str, str], source: str | Path = "exported model") -> Config:
    """The `Config` stored in an exported file's metadata (`read_metadata`)."""
    try:
        return Config.from_dict(json.loads(metadata[CONFIG_KEY]))
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{source}: metadata '{CONFIG_KEY}' is not a valid nbsrc config ({exc})") from None


def anchors_for(metadata: Mapping[str, str], image_size: tuple[int, int]) -> Tensor:
    """``Tensor[A, 4]`` cxcywh normalized anchors of an exported model for a network frame of ``(H, W)`` pixels
    (for latents ``h * latent_stride`` x ``w * latent_stride``), in the order of its outputs."""
    cfg = config_of(metadata)
    return AnchorGenerator.from_config(cfg.anchors, json.loads(metadata["nbsrc_strides"]))(image_size)


def _providers(device: str) -> list[str]:
    """onnxruntime execution providers for `device` (``cpu``, ``cuda``, ``cuda:N`` or ``auto``)."""
    ort = _require("onnxruntime", "it runs ONNX files")

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "auto":
        return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    if device == "cuda" or device.startswith("cuda:"):
        if "CUDAExecutionProvider" not in available:
            raise ValueError(
                f"device {device!r}: this onnxruntime has no CUDA provider (available: {', '.join(available)}); "
                "install onnxruntime-gpu, or run on the CPU"
            )
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]  # type: ignore[list-item]
    raise ValueError(f"device must be cpu, cuda, cuda:N or auto, got {device!r}")


class OnnxRuntimeModel:
    """An ONNX file of `export_model` run by onnxruntime, with the interface `nbsrc.detector.Detector` uses of a
    model; its ``conf`` holds class probabilities already (``conf_scored``), not logits.

    `threads`: onnxruntime intra-op threads (None: its default); `device`: ``cpu``, ``cuda``, ``cuda:N`` (needs
    onnxruntime-gpu) or ``auto``.
    """

    conf_scored = True

    def __init__(self, path: str | Path, threads: int | None = None, device: str = "cpu") -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: ONNX model file not found")
        self.session = _onnx_session(self.path, threads, _providers(device))
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        _check_metadata(self.metadata, self.path)
        self.cfg = config_of(self.metadata, self.path)
        m = self.cfg.model
        self.input_kind = m.input_kind
        self.in_channels = m.latent_channels if m.input_kind == "latent" else 3
        self.latent_stride = m.latent_stride if m.input_kind == "latent" else 1
        self.num_classes = m.num_classes
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.has_landmarks = "landmarks" in self.output_names
        self.input_name = self.session.get_inputs()[0].name
        self.strides = json.loads(self.metadata["nbsrc_strides"])
        self.anchor_generator = AnchorGenerator.from_config(self.cfg.anchors, self.strides)

    def __repr__(self) -> str:
        return f"OnnxRuntimeModel({str(self.path)!r}, preset={self.cfg.preset!r})"

    def image_size(self, x: Tensor) -> tuple[int, int]:
        """Network-frame ``(H, W)`` in pixels of an input ``[B, C, H, W]`` (latent: ``h * latent_stride``)."""
        return int(x.shape[-2]) * self.latent_stride, int(x.shape[-1]) * self.latent_stride

    def anchors(self, x: Tensor) -> Tensor:
        """``[A, 4]`` cxcywh normalized anchors for input `x` (cached per size)."""
        return self.anchor_generator(self.image_size(x), "cpu")

    def __call__(self, x: Tensor) -> dict[str, Tensor | None]:
        """``{"loc": [B, A, 4], "conf": [B, A, C] probabilities, "landm": [B, A, 10] | None}`` of a float
        ``[B, in_channels, H, W]`` batch (CPU tensors sharing onnxruntime's output memory)."""
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{self.path}: expected a float [B, {self.in_channels}, H, W] tensor, got {got}")
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()  # no copy for a CPU float32 batch
        outputs = dict(zip(self.output_names, self.session.run(self.output_names, {self.input_name: array})))
        landm = outputs.get("landmarks")
        return {
            "loc": torch.from_numpy(outputs["loc"]),  # (B, A, 4)
            "conf": torch.from_numpy(outputs["conf"]),  # (B, A, C)
            "landm": torch.from_numpy(landm) if landm is not None else None,  # (B, A, 10)
        }
