"""Export a detector to ONNX or TorchScript, and run an exported ONNX file with onnxruntime.

The exported graph is the model of a checkpoint with the published test-phase outputs (biubug6's
``RetinaFace(phase="test")``), so code written for biubug6's ONNX exports runs ours unchanged:

- input ``input0``: the tensor the model's forward takes, float32 ``[N, 3, H, W]`` for RGB models (what
  `nbsrc.preprocess.normalize_image` makes: for the biubug6 presets BGR pixels minus (104, 117, 123)) or
  ``[N, C, h, w]`` for latent models; batch and spatial size are dynamic.
- outputs, in this order: ``loc`` ``[N, A, 4]`` raw box regressions, ``conf`` ``[N, A, C]`` class probabilities
  (softmax over the C columns, or for focal-loss models an independent sigmoid per column: column 0, the
  background, is then not a score; the detector scores classes 1..C-1 exactly so, `nbsrc.postprocess.class_scores`),
  and ``landmarks`` ``[N, A, 10]`` raw landmark regressions when the model has a landmark head.

Anchors depend on the input size, so decoding stays outside the graph: the anchors of an input are
`anchors_for` (the project's prior generator, in the (level, y, x, k) order of the outputs), decoded with
`nbsrc.boxes.decode_boxes` / `decode_landmarks` and the variances of the config.

The config travels inside the file: ONNX ``metadata_props`` and TorchScript ``_extra_files`` hold `METADATA_KEYS`
(``nbsrc_config`` is `nbsrc.config.Config.to_dict` as JSON), read back by `read_metadata` / `config_of`.
`OnnxRuntimeModel` runs an exported ONNX file behind the interface `nbsrc.detector.Detector` uses of a model
(`nbsrc.detector.Detector.from_onnx`).
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
# the exported graph against the PyTorch model, checked after every export: per output
# max |exported - pytorch| <= CHECK_TOL * max(1, max |pytorch|) (float32 error grows with the output's scale)
CHECK_TOL = 1e-4


class ExportModule(nn.Module):
    """A RetinaFace with the published test-phase outputs: ``(loc, conf probabilities[, landmarks])``.

    Args:
        model: a `nbsrc.model.RetinaFace` (its forward returns ``{"loc", "conf", "landm"}`` with raw logits).
        cls_loss: ``loss.cls_loss`` of its config: ``ohem`` scores with a softmax over the C columns, ``focal``
            with a sigmoid per column (as the detector scores them, `nbsrc.postprocess.class_scores`).
    """

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
    scores = "softmax" if cfg.loss.cls_loss == "ohem" else "sigmoid"
    return {
        CONFIG_KEY: json.dumps(cfg.to_dict()),
        "nbsrc_input": _input_text(model, cfg),
        "nbsrc_outputs": ",".join(output_names(model)),
        "nbsrc_scores": scores,
        "nbsrc_strides": json.dumps(list(model.strides)),
        "nbsrc_variances": json.dumps(list(cfg.anchors.variances)),
    }


def format_of(out: str | Path, fmt: str | None = None) -> str:
    """The export format: `fmt` when given (``onnx`` or ``torchscript``), else told by the suffix of `out`
    (``.onnx``; ``.pt``, ``.ts``, ``.torchscript``). Raises `ValueError` naming what was expected."""
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
    """Largest |exported - reference| over the outputs; raises `RuntimeError` beyond `CHECK_TOL`."""
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
    """TorchScript without its noise: tracer warnings about the model's shape checks (they become constants; the
    sizes stay dynamic) and the deprecation notices of recent torch (TorchScript is what was asked for)."""
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
    with warnings.catch_warnings():
        # shape checks in the model's forward become constants in the trace; the sizes themselves stay dynamic
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
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
    """Write `model` (a `nbsrc.model.RetinaFace` built from `cfg`) as an ONNX or TorchScript file.

    Args:
        model: the model; it is put in eval mode on the CPU.
        cfg: its config (written into the file, and it decides how ``conf`` is scored).
        out: the file to write (atomically).
        fmt: ``onnx`` or ``torchscript``; None: told by the suffix of `out` (`format_of`).
        size: ``(H, W)`` of the traced input (pixels for RGB models, latent cells for latent models); the
            exported file takes any size. Default: ``data.image_size`` (at most 640) square, or its latent.
        check: run the written file on the traced input and on a second one (batch 2, another odd size) and
            raise `RuntimeError` unless it gives the PyTorch model's outputs (within `CHECK_TOL`).

    Returns:
        `out`. Raises `ValueError` for an unknown format or an output path that cannot be a file.
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
    """`export_model` of a checkpoint: ours, or a published state dict (preset inferred when None), loaded as
    `nbsrc.model.loading.load_model` loads it. The format and output path are checked before the weights are read."""
    out = Path(out)
    fmt = format_of(out, fmt)
    _check_out(out)
    model, cfg = load_model(weight, preset=preset, device="cpu")
    return export_model(model, cfg, out, fmt, size=size, check=check)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The nbsrc metadata of an exported ONNX or TorchScript file (raises `ValueError` naming the file when it
    is not one `export_model` wrote)."""
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
    if CONFIG_KEY not in metadata:
        raise ValueError(
            f"{path}: holds no '{CONFIG_KEY}' metadata: not a file written by 'python -m nbsrc export' "
            "(export the checkpoint with it)"
        )
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
    """An exported ONNX detector run by onnxruntime, with the interface `nbsrc.detector.Detector` uses of a
    model: ``input_kind``, ``in_channels``, ``latent_stride``, ``num_classes``, ``has_landmarks``, ``strides``,
    ``image_size(x)``, ``anchors(x)`` and ``model(x) -> {"loc", "conf", "landm"}``. Its ``conf`` holds class
    probabilities already (``conf_scored``), not logits.

    Args:
        path: a file written by `export_model` (format ``onnx``).
        threads: onnxruntime intra-op threads (None: onnxruntime's default, one per physical core).
        device: ``cpu`` (default), ``cuda``, ``cuda:N`` (needs onnxruntime-gpu) or ``auto``.
    """

    conf_scored = True

    def __init__(self, path: str | Path, threads: int | None = None, device: str = "cpu") -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: ONNX model file not found")
        self.session = _onnx_session(self.path, threads, _providers(device))
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        if CONFIG_KEY not in self.metadata:
            raise ValueError(
                f"{self.path}: holds no '{CONFIG_KEY}' metadata: not a file written by 'python -m nbsrc export' "
                "(export the checkpoint with it)"
            )
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
        """``Tensor[A, 4]`` cxcywh normalized anchors for input `x` (cached per size)."""
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
