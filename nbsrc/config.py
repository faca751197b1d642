"""One typed, validated configuration for every part of the toolkit.

`Config` groups six frozen dataclasses (model, anchors, loss, data, train, eval). Named presets build a
`Config`; `Config.replace(**overrides)` takes dotted keys (``train.lr``) or unique bare keys (``lr``).
Unknown keys and out-of-range values raise `ValueError` naming the key, with a "did you mean" hint.
The whole config is stored in every checkpoint and every run folder (`to_dict` / `from_dict`).
"""

from __future__ import annotations

import ast
import dataclasses
import datetime
import difflib
import functools
import json
import math
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nbsrc.utils import atomic_write_text

__all__ = [
    "AnchorConfig",
    "Config",
    "DataConfig",
    "EvalConfig",
    "LossConfig",
    "ModelConfig",
    "TrainConfig",
    "coerce_value",
    "get_preset",
    "list_presets",
    "register_preset",
]

# the settings that take one of a few names: `Literal` field types, checked where a config is built (`_check_choices`)
Backbone = Literal["mobilenet0.25", "resnet18", "resnet34", "resnet50"]
Neck = Literal["biubug6", "p2p6"]
InputKind = Literal["rgb", "latent"]
Bridge = Literal["deconv", "bilinear", "nearest", "pixelshuffle"]
ChannelOrder = Literal["bgr", "rgb"]
AnchorStyle = Literal["min_sizes", "octave"]
ClsLoss = Literal["ohem", "focal"]
ResizePolicy = Literal["stretch", "letterbox"]
OnError = Literal["raise", "skip"]
CheckValues = Literal["eval", "all", "none"]
Optimizer = Literal["sgd", "adamw"]
Schedule = Literal["step", "multistep", "cosine", "constant"]
Amp = Literal["auto", "fp16", "bf16", "off"]
Wandb = Literal["online", "offline", "disabled"]
TestScale = Literal["square", "original", "mxnet"]

TEST_SCALES: tuple[str, ...] = typing.get_args(TestScale)  # RGB prediction input sizes (see EvalConfig.test_scale)
# data settings of a training run that must not shape prediction, and their prediction values (Config.for_prediction)
TRAINING_ONLY_DATA = {"max_images": None, "latent_crop": None, "latent_flip": False, "augment": False}


def _fail(key: str, message: str) -> None:
    raise ValueError(f"config key '{key}': {message}")


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        _fail(key, message)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_choices(group: Any, prefix: str) -> None:
    """Every `Literal` field of the dataclass `group` holds one of its names (`coerce_value` raises naming the key)."""
    for name, hint in _hints(type(group)).items():
        if typing.get_origin(hint) is Literal:
            coerce_value(getattr(group, name), hint, f"{prefix}.{name}")


@dataclass(frozen=True)
class ModelConfig:
    backbone: Backbone = "mobilenet0.25"  # mobilenet0.25 | resnet18 | resnet34 | resnet50
    neck: Neck = "biubug6"  # biubug6: FPN P3-P5 + one SSH per level; p2p6: FPN P2-P6 + one shared SSH
    input_kind: InputKind = "rgb"  # rgb: images [B,3,H,W]; latent: JPEG AI latents [B,C,h,w] through a bridge
    out_channels: int = 64  # width of FPN, SSH and heads
    num_classes: int = 2  # classifier outputs including background: 2 = (bg, face), 3 = (bg, face, person)
    landmarks: bool = True  # landmark head (5 points); the 2-class design has none
    bridge: Bridge = "deconv"  # latent -> stride-4 input of the backbone: deconv | bilinear | nearest | pixelshuffle
    latent_channels: int = 256  # channels of the latent tensor
    latent_stride: int = 16  # image pixels per latent cell: a 40x40 latent describes a 640x640 image
    pretrained: str = "auto"  # auto (try ImageNet, warn and start from scratch) | none | imagenet (required) | path
    channel_order: ChannelOrder = "bgr"  # channel order of RGB-path network input: bgr (biubug6) | rgb
    pixel_mean: tuple[float, float, float] = (104.0, 117.0, 123.0)  # subtracted from 0..255 pixels, in channel_order
    pixel_std: tuple[float, float, float] = (1.0, 1.0, 1.0)  # then divided, in channel_order

    def __post_init__(self) -> None:
        _check_choices(self, "model")
        _check(
            self.out_channels >= 8 and self.out_channels % 4 == 0, "model.out_channels", "must be a multiple of 4, >= 8"
        )
        _check(
            self.num_classes >= 2, "model.num_classes", f"must be >= 2 (background + classes), got {self.num_classes}"
        )
        _check(self.latent_channels >= 1, "model.latent_channels", "must be >= 1")
        _check(self.latent_stride in (4, 8, 16, 32), "model.latent_stride", "must be 4, 8, 16 or 32")
        _check(all(s > 0 for s in self.pixel_std), "model.pixel_std", "must be > 0")
        if self.input_kind == "latent":
            _check(self.neck == "p2p6", "model.neck", "latent input uses the p2p6 neck")


@dataclass(frozen=True)
class AnchorConfig:
    style: AnchorStyle = "min_sizes"  # min_sizes: level sizes x ratios (biubug6) | octave: base*2^k x scales x ratios
    min_sizes: tuple[tuple[float, ...], ...] = ((16, 32), (64, 128), (256, 512))  # per level, pixels (min_sizes)
    aspect_ratios: tuple[float, ...] = (1.0,)  # h/w of each anchor; area kept (w = s/sqrt(r), h = s*sqrt(r))
    base_size: float = 8.0  # octave: level k anchors are base_size * 2^k * scale
    scales: tuple[float, ...] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))  # octave scales per level
    clip: bool = False  # clamp normalized cx, cy, w, h to [0, 1] (the 2-class design does)
    variances: tuple[float, float] = (0.1, 0.2)  # box coding variances (centre, size)

    def __post_init__(self) -> None:
        _check_choices(self, "anchors")
        _check(
            len(self.min_sizes) >= 1 and all(len(s) >= 1 for s in self.min_sizes), "anchors.min_sizes", "empty level"
        )
        _check(all(m > 0 for s in self.min_sizes for m in s), "anchors.min_sizes", "sizes must be > 0")
        _check(
            len(self.aspect_ratios) >= 1 and all(r > 0 for r in self.aspect_ratios),
            "anchors.aspect_ratios",
            "must be > 0",
        )
        _check(self.base_size > 0, "anchors.base_size", "must be > 0")
        _check(len(self.scales) >= 1 and all(s > 0 for s in self.scales), "anchors.scales", "must be > 0")
        _check(len(self.variances) == 2 and all(v > 0 for v in self.variances), "anchors.variances", "two values > 0")


@dataclass(frozen=True)
class LossConfig:
    cls_loss: ClsLoss = "ohem"  # ohem: softmax CE + hard-negative mining | focal: sigmoid focal loss, no mining
    pos_iou: float = 0.35  # anchors with IoU >= this to a GT are positives
    force_iou: float = 0.2  # each GT takes its best anchor when that IoU >= this
    neg_pos_ratio: float = 7.0  # mined negatives per positive (per image)
    empty_negatives: int = 200  # negatives mined in an image without positives (0 = published behaviour)
    loc_weight: float = 2.0  # total = loc_weight*box + cls_weight*class + landm_weight*landmark
    cls_weight: float = 1.0
    landm_weight: float = 1.0
    focal_alpha: float = 0.25  # focal loss alpha
    focal_gamma: float = 2.0  # focal loss gamma
    match_chunk: int = 65536  # anchors per IoU chunk in matching (bounds memory)

    def __post_init__(self) -> None:
        _check_choices(self, "loss")
        _check(0 < self.pos_iou <= 1, "loss.pos_iou", f"must be in (0, 1], got {self.pos_iou}")
        _check(0 <= self.force_iou <= 1, "loss.force_iou", f"must be in [0, 1], got {self.force_iou}")
        _check(self.neg_pos_ratio >= 0, "loss.neg_pos_ratio", "must be >= 0")
        _check(self.empty_negatives >= 0, "loss.empty_negatives", "must be >= 0")
        for key in ("loc_weight", "cls_weight", "landm_weight", "focal_gamma"):
            _check(getattr(self, key) >= 0, f"loss.{key}", "must be >= 0")
        _check(0 <= self.focal_alpha <= 1, "loss.focal_alpha", "must be in [0, 1]")
        _check(self.match_chunk >= 1024, "loss.match_chunk", "must be >= 1024")


@dataclass(frozen=True)
class DataConfig:
    dataset_root: str | None = None  # folder with train/ and val/ (retina-modify layout); None = demo data
    train_split: str = "train"  # split folder used for training
    val_split: str = "val"  # split folder used for validation / evaluation
    train_labels: str | None = None  # label file (or folder) of the training split; None = found in the split folder
    val_labels: str | None = None  # label file (or folder) of the validation split; None = found in the split folder
    latent_suffix: str = "latent_75.npy"  # which rate point to read (latent_{12,25,50,75,100}.npy)
    all_rates: bool = False  # every image contributes one sample per available rate
    image_size: int = 640  # network input side for RGB (and the image side a latent describes)
    label_frame: int | None = None  # None: labels in original-image pixels; 640: labels already in the 640 frame
    resize_policy: ResizePolicy = "stretch"  # how originals became the network frame: stretch | letterbox
    sizes_csv: str | None = None  # CSV name,width,height of the original images (for the label frame)
    images_root: str | None = None  # WIDER FACE image tree giving the original sizes (WIDER_<split>/images, ...)
    cache_dir: str | None = None  # where original sizes read from images_root are cached (None: the run folder)
    normalize_latents: bool = False  # per-channel standardisation with cached statistics
    latent_flip: bool = False  # horizontal flip of latents (not equivalent to encoding a flipped image)
    latent_crop: int | None = None  # train on random square crops of this many latent cells (None: whole latents)
    augment: bool = True  # RetinaFace training augmentation for RGB data
    on_error: OnError = "raise"  # raise | skip (bad samples logged and counted, never dropped silently)
    num_workers: int = 2  # DataLoader workers
    max_images: int | None = None  # use only the first N images of each split (smoke runs; training only)
    # NaN/Inf check of the latents when a split is indexed (cached by size + mtime): eval (the validation and
    # evaluation splits; training latents are checked as they load, which reads them anyway) | all | none
    check_values: CheckValues = "eval"

    def __post_init__(self) -> None:
        _check_choices(self, "data")
        _check(
            self.latent_suffix.endswith(".npy"), "data.latent_suffix", f"must end with .npy, got {self.latent_suffix!r}"
        )
        _check(
            self.image_size >= 32 and self.image_size % 8 == 0,  # 8, not 32: the r50-biubug6 preset trains at 840
            "data.image_size",
            f"must be a multiple of 8, >= 32, got {self.image_size}",
        )
        _check(self.label_frame is None or self.label_frame > 0, "data.label_frame", "must be None or > 0")
        _check(self.num_workers >= 0, "data.num_workers", "must be >= 0")
        _check(self.latent_crop is None or self.latent_crop >= 4, "data.latent_crop", "must be None or >= 4 cells")
        _check(self.max_images is None or self.max_images >= 1, "data.max_images", "must be None or >= 1")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20  # training epochs
    batch_size: int = 8  # images per step (per process under DDP)
    optimizer: Optimizer = "sgd"  # sgd | adamw
    lr: float = 1e-3  # peak learning rate
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 5e-4  # weight decay
    schedule: Schedule = "step"  # step (x gamma every step_size epochs) | multistep (at milestones) | cosine | constant
    step_size: int = 5  # epochs between decays (step)
    gamma: float = 0.7  # decay factor (step, multistep)
    milestones: tuple[int, ...] = (190, 220)  # epochs of decay (multistep)
    warmup_epochs: float = 1.0  # linear warm-up length in epochs (0 = none)
    amp: Amp = "auto"  # auto (fp16 on CUDA w/o bf16, bf16 where supported) | fp16 | bf16 | off
    channels_last: bool = True  # channels_last memory format on CUDA
    compile: bool = False  # torch.compile the model
    grad_clip: float = 10.0  # max gradient norm (0 = off)
    freeze_backbone: bool = False  # freeze backbone parameters (incl. the latent model's pruned ResNet or MobileNet)
    weight: str | None = None  # initialise from this checkpoint
    resume: str | None = None  # resume from this checkpoint (model, optimizer, scaler, scheduler, epoch, RNG)
    seed: int = 42  # random seed
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    out: str = "runs"  # parent folder of run folders
    run_name: str | None = None  # run folder name (default: preset + timestamp)
    wandb: Wandb = "disabled"  # online | offline | disabled
    wandb_project: str = "retinaface-latent"  # W&B project
    eval_every: int = 1  # validate every N epochs
    progress: bool = True  # tqdm progress bars (auto-throttled when not a terminal)
    max_steps_per_epoch: int | None = None  # cap steps per epoch (smoke runs)
    keep_epochs: int | None = None  # keep only the newest N epoch_XXX.pth files (None: all; last/best stay)

    def __post_init__(self) -> None:
        _check_choices(self, "train")
        _check(self.epochs >= 1, "train.epochs", f"must be >= 1, got {self.epochs}")
        _check(self.batch_size >= 1, "train.batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.lr > 0 and math.isfinite(self.lr), "train.lr", f"must be > 0, got {self.lr}")
        _check(0 <= self.momentum < 1, "train.momentum", "must be in [0, 1)")
        _check(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        _check(self.step_size >= 1, "train.step_size", "must be >= 1")
        _check(0 < self.gamma <= 1, "train.gamma", "must be in (0, 1]")
        _check(self.warmup_epochs >= 0, "train.warmup_epochs", "must be >= 0")
        _check(self.grad_clip >= 0, "train.grad_clip", "must be >= 0")
        _check(
            self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:"),
            "train.device",
            f"expected auto | cpu | cuda | cuda:N, got {self.device!r}",
        )
        _check(self.eval_every >= 1, "train.eval_every", "must be >= 1")
        _check(self.max_steps_per_epoch is None or self.max_steps_per_epoch >= 1, "train.max_steps_per_epoch", ">= 1")
        _check(self.keep_epochs is None or self.keep_epochs >= 0, "train.keep_epochs", "must be None or >= 0")


@dataclass(frozen=True)
class EvalConfig:
    conf_thresh: float = 0.02  # score threshold before NMS (published WIDER setting)
    nms_thresh: float = 0.4  # NMS IoU threshold
    top_k: int = 5000  # candidates kept before NMS, per image
    keep_top_k: int = 750  # detections kept after NMS, per image
    iou_thresh: float = 0.5  # evaluation IoU threshold
    batch_size: int = 8  # images per inference batch
    # RGB prediction input size (nbsrc.data.transforms.test_scale_factor); latent models keep their latent frame
    # and ignore it with a warning. Non-square protocols predict one image per batch.
    test_scale: TestScale = "square"  # square: data.image_size | original: own size | mxnet: short 1600, long <= 2150
    gt_dir: str | None = None  # WIDER val ground truth (.mat files); None: found (nbsrc.evaluation.ground_truth)

    def __post_init__(self) -> None:
        _check_choices(self, "eval")
        _check(0 <= self.conf_thresh <= 1, "eval.conf_thresh", "must be in [0, 1]")
        _check(0 < self.nms_thresh <= 1, "eval.nms_thresh", "must be in (0, 1]")
        _check(self.top_k >= 1, "eval.top_k", "must be >= 1")
        _check(self.keep_top_k >= 1, "eval.keep_top_k", "must be >= 1")
        _check(0 < self.iou_thresh <= 1, "eval.iou_thresh", "must be in (0, 1]")
        _check(self.batch_size >= 1, "eval.batch_size", "must be >= 1")


_GROUPS: dict[str, type] = {
    "model": ModelConfig,
    "anchors": AnchorConfig,
    "loss": LossConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
}


@dataclass(frozen=True)
class Config:
    preset: str = "mnet-biubug6"  # name of the preset this config started from
    model: ModelConfig = field(default_factory=ModelConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.anchors.style == "min_sizes" and self.model.neck == "p2p6":
            _check(len(self.anchors.min_sizes) == 5, "anchors.min_sizes", "the p2p6 neck has 5 levels")
        if self.anchors.style == "min_sizes" and self.model.neck == "biubug6":
            _check(len(self.anchors.min_sizes) == 3, "anchors.min_sizes", "the biubug6 neck has 3 levels")

    # ---- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            atomic_write_text(Path(path), text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Config:
        """Strict inverse of `to_dict`: unknown keys raise `ValueError` with a suggestion."""
        if not isinstance(data, Mapping):
            raise ValueError(f"config must be a mapping, got {type(data).__name__}")
        _reject_unknown(data.keys(), ["preset", *_GROUPS], "")
        kwargs: dict[str, Any] = {}
        if "preset" in data:
            kwargs["preset"] = coerce_value(data["preset"], str, "preset")
        for group, group_cls in _GROUPS.items():
            if group in data:
                values = data[group]
                if not isinstance(values, Mapping):
                    raise ValueError(f"config key '{group}': expected a mapping, got {type(values).__name__}")
                kwargs[group] = _build_group(group_cls, values, group)
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | Path) -> Config:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(data)

    # ---- overrides -----------------------------------------------------------------------------
    def for_prediction(self) -> Config:
        """This config with the training-only data settings (`TRAINING_ONLY_DATA`) reset, for predicting with a
        checkpoint's config."""
        return self.replace(**{f"data.{key}": value for key, value in TRAINING_ONLY_DATA.items()})

    def replace(self, **overrides: Any) -> Config:
        """Copy with overrides. Keys are dotted (``train.lr``), bare when unique (``lr``), or group names
        with a mapping (``train={"lr": 0.01}``). String values are parsed as Python literals when the
        field is not a string (so CLI ``key=value`` pairs work)."""
        per_group: dict[str, dict[str, Any]] = {g: {} for g in _GROUPS}
        kwargs: dict[str, Any] = {}
        for key, value in overrides.items():
            if key in _GROUPS and isinstance(value, Mapping):
                per_group[key].update(value)
                continue
            group, name = _resolve_key(key)
            if group is None:
                kwargs["preset"] = coerce_value(value, str, "preset")
            else:
                per_group[group][name] = value
        for group, values in per_group.items():
            if values:
                current = {**dataclasses.asdict(getattr(self, group)), **values}
                kwargs[group] = _build_group(_GROUPS[group], current, group)
        return dataclasses.replace(self, **kwargs)

    def override_pairs(self, pairs: list[str]) -> Config:
        """Apply CLI-style ``key=value`` strings."""
        overrides: dict[str, Any] = {}
        for pair in pairs:
            if "=" not in pair:
                raise ValueError(f"override {pair!r}: expected key=value")
            key, value = pair.split("=", 1)
            overrides[key.strip()] = value.strip()
        return self.replace(**overrides)


def all_keys() -> list[str]:
    """Every dotted key of the config."""
    keys = ["preset"]
    for group, group_cls in _GROUPS.items():
        keys += [f"{group}.{f.name}" for f in dataclasses.fields(group_cls)]
    return keys


def _reject_unknown(keys: Any, known: list[str], prefix: str) -> None:
    for key in keys:
        if key not in known:
            hint = difflib.get_close_matches(str(key), known, n=1)
            suggestion = f"; did you mean '{prefix}{hint[0]}'?" if hint else f"; known keys: {', '.join(known)}"
            raise ValueError(f"unknown config key '{prefix}{key}'{suggestion}")


def _resolve_key(key: str) -> tuple[str | None, str]:
    if key == "preset":
        return None, key
    if "." in key:
        _reject_unknown([key], all_keys(), "")
        group, name = key.split(".", 1)
        return group, name
    owners = [g for g, c in _GROUPS.items() if key in {f.name for f in dataclasses.fields(c)}]
    if len(owners) == 1:
        return owners[0], key
    if len(owners) > 1:
        raise ValueError(f"config key '{key}' is ambiguous; use one of {[f'{g}.{key}' for g in owners]}")
    bare = sorted({k.split(".", 1)[-1] for k in all_keys()} | set(all_keys()))
    hint = difflib.get_close_matches(key, bare, n=1)
    raise ValueError(f"unknown config key '{key}'" + (f"; did you mean '{hint[0]}'?" if hint else ""))


def _build_group(group_cls: type, values: Mapping[str, Any], group: str) -> Any:
    names = [f.name for f in dataclasses.fields(group_cls)]
    _reject_unknown(values.keys(), names, f"{group}.")
    coerced = {k: coerce_value(v, _hints(group_cls)[k], f"{group}.{k}") for k, v in values.items()}
    return group_cls(**coerced)


_INT_TEXT = re.compile(r"[+-]?\d+")
_FLOAT_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")  # YAML 1.1 reads 1e-3 as text
_NONE_TEXT = ("None", "null")
_BOOL_TEXT = {"true": True, "false": False, "yes": True, "no": False}


def coerce_value(value: Any, hint: Any, key: str) -> Any:
    """`value` as the annotated type `hint` (bool, int, float, str, a `Literal`, a tuple, an optional or a union
    of these; other hints pass the value through), or `ValueError` naming `key`.

    Text is read as what the type needs (``"5"`` an int, ``"1e-3"`` a float, ``"true"`` / ``"yes"`` a bool,
    ``"(1, 2)"`` a tuple, ``"None"`` / ``"null"`` none where the hint allows it); an integral float is an int,
    an int a float, numbers, paths and dates the text of a string."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, typing.get_args(hint), key)
    if origin is Literal:
        _check(value in typing.get_args(hint), key, f"expected one of {list(typing.get_args(hint))}, got {value!r}")
        return value
    if origin is tuple:
        return _coerce_tuple(value, typing.get_args(hint), key)
    coerce = _SCALARS.get(hint)
    return value if coerce is None else coerce(value, key)


def _coerce_union(value: Any, args: tuple, key: str) -> Any:
    if type(None) in args and (value is None or (isinstance(value, str) and value in _NONE_TEXT)):
        return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return coerce_value(value, arg, key)
        except ValueError as exc:
            errors.append(str(exc))
    raise ValueError(errors[0] if errors else f"config key '{key}': bad value {value!r}")


def _coerce_tuple(value: Any, args: tuple, key: str) -> tuple:
    if isinstance(value, str):
        value = _literal(value, key, "a sequence")
    if not isinstance(value, (list, tuple)):
        _fail(key, f"expected a sequence, got {value!r}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(coerce_value(v, args[0], key) for v in value)
    _check(len(value) == len(args), key, f"expected {len(args)} values, got {len(value)}")
    return tuple(coerce_value(v, a, key) for v, a in zip(value, args))


def _literal(text: str, key: str, what: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        _fail(key, f"expected {what}, got {text!r}")


def _coerce_bool(value: Any, key: str) -> bool:
    if isinstance(value, str) and value.strip().lower() in _BOOL_TEXT:
        return _BOOL_TEXT[value.strip().lower()]
    if isinstance(value, str):
        value = _literal(value, key, "a bool")
    if isinstance(value, bool):
        return value
    _check(isinstance(value, int) and value in (0, 1), key, f"expected a bool, got {value!r}")
    return bool(value)


def _coerce_int(value: Any, key: str) -> int:
    if isinstance(value, str) and _INT_TEXT.fullmatch(value.strip()):
        return int(value)
    ok = not isinstance(value, (bool, str)) and isinstance(value, (int, float)) and int(value) == value
    _check(ok, key, f"expected an int, got {value!r}")
    return int(value)


def _coerce_float(value: Any, key: str) -> float:
    if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        value = float(value)
    _check(not isinstance(value, bool) and isinstance(value, (int, float)), key, f"expected a number, got {value!r}")
    _check(math.isfinite(float(value)), key, f"expected a finite number, got {value!r}")
    return float(value)


def _coerce_str(value: Any, key: str) -> str:
    if isinstance(value, (os.PathLike, datetime.date, datetime.time)):  # paths and dates: their text
        return os.fspath(value) if isinstance(value, os.PathLike) else value.isoformat()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    _check(isinstance(value, str), key, f"expected a string, got {value!r}")
    return value


_SCALARS: dict[Any, Callable[[Any, str], Any]] = {
    bool: _coerce_bool,
    int: _coerce_int,
    float: _coerce_float,
    str: _coerce_str,
}


# ---- presets -------------------------------------------------------------------------------------
_PRESETS: dict[str, Callable[[], Config]] = {}


def register_preset(name: str) -> Callable[[Callable[[], Config]], Callable[[], Config]]:
    def wrap(fn: Callable[[], Config]) -> Callable[[], Config]:
        _PRESETS[name] = fn
        return fn

    return wrap


def list_presets() -> list[str]:
    return list(_PRESETS)


def get_preset(name: str, **overrides: Any) -> Config:
    """Config of a named preset, with optional overrides (see `Config.replace`)."""
    if name not in _PRESETS:
        hint = difflib.get_close_matches(name, list(_PRESETS), n=1)
        raise ValueError(
            f"unknown preset '{name}'"
            + (f"; did you mean '{hint[0]}'?" if hint else "")
            + f" (presets: {', '.join(_PRESETS)})"
        )
    cfg = _PRESETS[name]()
    return cfg.replace(**overrides) if overrides else cfg


def _biubug6_recipe(batch_size: int, epochs: int, milestones: tuple[int, int]) -> TrainConfig:
    """biubug6's training recipe: SGD lr 1e-3, x0.1 at two milestones, no warm-up (``warmup_epoch = -1``)."""
    return TrainConfig(
        batch_size=batch_size, epochs=epochs, schedule="multistep", milestones=milestones, gamma=0.1, warmup_epochs=0.0
    )


@register_preset("mnet-biubug6")
def _mnet_biubug6() -> Config:
    return Config(preset="mnet-biubug6", train=_biubug6_recipe(32, 250, (190, 220)))


@register_preset("r50-biubug6")
def _r50_biubug6() -> Config:
    return Config(
        preset="r50-biubug6",
        model=ModelConfig(backbone="resnet50", out_channels=256),
        data=DataConfig(image_size=840),
        train=_biubug6_recipe(24, 100, (70, 90)),
    )


@register_preset("mnet-2cls")
def _mnet_2cls() -> Config:
    return Config(
        preset="mnet-2cls",
        model=ModelConfig(num_classes=3, landmarks=False),
        anchors=AnchorConfig(aspect_ratios=(1.0, 2.5, 3.33), clip=True),
        loss=LossConfig(pos_iou=0.45),
        train=_biubug6_recipe(24, 250, (190, 220)),  # the 2-class fork keeps biubug6's decay epochs
    )


_OCTAVE = AnchorConfig(style="octave", aspect_ratios=(2.0, 1.0), base_size=8.0)  # h/w 2 == w/h 0.5
_IMAGENET_RGB = {"channel_order": "rgb", "pixel_mean": (123.675, 116.28, 103.53), "pixel_std": (58.395, 57.12, 57.375)}


def _p2p6(name: str, backbone: str) -> Config:
    model = ModelConfig(backbone=backbone, neck="p2p6", out_channels=64, **_IMAGENET_RGB)
    return Config(preset=name, model=model, anchors=_OCTAVE)


def _latent(name: str, backbone: str) -> Config:
    bridge = "pixelshuffle" if backbone == "mobilenet0.25" else "deconv"  # a deconv bridge would outweigh MobileNet
    model = ModelConfig(backbone=backbone, neck="p2p6", input_kind="latent", out_channels=64, bridge=bridge)
    return Config(preset=name, model=model, anchors=_OCTAVE)


for _name, _backbone in (("r18", "resnet18"), ("r34", "resnet34"), ("r50", "resnet50"), ("mnet", "mobilenet0.25")):
    register_preset(f"{_name}-p2p6")(lambda n=f"{_name}-p2p6", b=_backbone: _p2p6(n, b))
for _name, _backbone in (("r50", "resnet50"), ("r18", "resnet18"), ("r34", "resnet34"), ("mnet", "mobilenet0.25")):
    register_preset(f"latent-{_name}")(lambda n=f"latent-{_name}", b=_backbone: _latent(n, b))
