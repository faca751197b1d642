"""``python -m nbsrc train``: train RetinaFace on JPEG AI latents or RGB images.

    python -m nbsrc train --preset latent-r50 --dataset_root ROOT --epochs 20 --batch_size 8 [key=value ...]

``key=value`` pairs, anywhere among the options, override any config field (``lr=0.01``,
``train.schedule=cosine``). Without
``--dataset_root`` the demo dataset is built and used (on Kaggle: the attached dataset). ``--nproc N`` trains
with N processes (one per GPU) through ``torchrun``; running this command under ``torchrun`` works as well.

The ancestors' spellings are accepted so their commands keep working:
``--use_latent --model resnet50`` (latent-r50), ``--model resnet18`` (r18-p2p6; latent-r18 when the dataset
holds latents and no images), ``--network mobile0.25`` (mnet-biubug6), ``--network resnet50`` (r50-biubug6; with
``--use_latent``: latent-r50), ``--latent_dir ROOT/train/latent``, ``--label_dir ROOT/train``, label files
``--train_label_file``, ``--val_label_file``, ``--training_dataset`` and ``--label_dir FILE.txt`` (used as given:
``data.train_labels`` / ``data.val_labels``), ``--val_latent_dir``, ``--latent_type`` / ``--latent_suffix
latent_75.npy``, ``--batchsize``, ``--epoch``, ``--no_wandb``, ``--resume_net`` (our checkpoint: full resume; a
published state dict: initial weights) with ``--resume_epoch``, ``--save_folder``, ``--run``, ``--num_workers``,
``--device ''|0|cpu``.

A resumed run (``--resume``, or ``--resume_net`` with our checkpoint) continues in the folder holding the
checkpoint, wherever the command runs from, unless ``--run_name`` (``train.run_name=``) is given; with only
``--out`` it continues in a folder of the checkpoint folder's name under ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from nbsrc.checkpoint import load_checkpoint
from nbsrc.config import Config, get_preset, list_presets
from nbsrc.data.loaders import build_dataloaders
from nbsrc.engine import fit, resolve_dataset_root_config
from nbsrc.launch import launch
from nbsrc.model import build_model
from nbsrc.model.loading import load_start_weights

HELP = "train RetinaFace (latent or RGB) on a dataset"
INTERMIXED = True  # key=value overrides anywhere among the options (`nbsrc.cli` parses with parse_intermixed_args)

logger = logging.getLogger(__name__)

_NETWORKS = {"mobile0.25": "mnet-biubug6", "mobilenet0.25": "mnet-biubug6", "resnet50": "r50-biubug6"}
_MODELS = {
    "resnet18": "r18",
    "r18": "r18",
    "resnet34": "r34",
    "r34": "r34",
    "resnet50": "r50",
    "r50": "r50",
    "mobilenet0.25": "mnet",
    "mobile0.25": "mnet",
    "mnet": "mnet",
}
_AMP = {
    "auto": "auto",
    "on": "auto",
    "true": "auto",
    "1": "auto",
    "fp16": "fp16",
    "bf16": "bf16",
    "off": "off",
    "false": "off",
    "0": "off",
    "none": "off",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 2)[-1]
    p = parser.add_argument
    p("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. lr=0.01 train.schedule=cosine")
    p("--preset", choices=list_presets(), help="model / training preset (default latent-r50)")
    p("--config", help="start from this config.json (e.g. a run folder's)")
    p("--dataset_root", help="folder with train/ and val/ (default: the demo dataset)")
    p("--epochs", "--epoch", dest="epochs", type=int, help="training epochs")
    p("--batch_size", "--batchsize", dest="batch_size", type=int, help="images per step (per process)")
    p("--lr", "--learning-rate", dest="lr", type=float, help="peak learning rate")
    p("--momentum", type=float, help="SGD momentum")
    p("--weight_decay", type=float, help="weight decay")
    p("--gamma", type=float, help="learning-rate decay factor")
    p("--image_size", type=int, help="network input side (RGB)")
    p("--seed", type=int, help="random seed")
    p("--device", help="auto | cpu | cuda | cuda:N ('' and N as in the ancestors' scripts)")
    p("--workers", "--num_workers", dest="workers", type=int, help="DataLoader workers")
    p("--amp", nargs="?", const="auto", help="mixed precision: auto | fp16 | bf16 | off (bare --amp: auto)")
    p("--freeze", action="store_true", help="freeze the backbone (the latent model's pruned ResNet or MobileNet)")
    p("--weight", help="initialise the model from this checkpoint")
    p("--resume", help="resume training from this checkpoint (its run folder is reused)")
    p("--wandb", choices=("online", "offline", "disabled"), help="Weights & Biases mode")
    p("--no_wandb", action="store_true", help="same as --wandb disabled")
    p("--run_name", "--run", dest="run_name", help="run folder name (default: preset + time)")
    p("--out", "--save_folder", dest="out", help="parent folder of run folders (default runs)")
    p("--nproc", type=int, default=1, help="processes (GPUs) to train with, through torchrun")
    p(
        "--check_only",
        action="store_true",
        help="resolve the config, the data and the --weight / --resume checkpoint, then stop",
    )
    legacy = parser.add_argument_group("ancestors' spellings")
    q = legacy.add_argument
    q("--use_latent", action="store_true", help="latent input (with --model: latent-rNN or latent-mnet)")
    q("--model", help="resnet18 | resnet34 | resnet50 | mobilenet0.25 (P2-P6 design; latent with --use_latent)")
    q("--network", help="mobile0.25 | resnet50 (the biubug6 design)")
    q("--latent_dir", help="ROOT/<split>/latent of the training split")
    q("--val_latent_dir", help="ROOT/<split>/latent of the validation split")
    q("--label_dir", help="ROOT/<split> (or its labels.txt) of the training split")
    q("--train_label_file", help="ROOT/<split>/labels.txt of the training split")
    q("--val_label_file", help="ROOT/<split>/labels.txt of the validation split")
    q("--training_dataset", help="ROOT/<split>/label.txt (biubug6)")
    q("--latent_suffix", "--latent_type", dest="latent_suffix", help="latent file per image, e.g. latent_75.npy")
    q("--resume_net", help="our checkpoint (resume) or a published state dict (initial weights)")
    q("--resume_epoch", type=int, help="epochs the --resume_net / --weight weights count as trained")
    for flag in ("--tuning", "--download"):
        q(flag, action="store_true", help=argparse.SUPPRESS)
    q("--startfm", type=int, help=argparse.SUPPRESS)


# ---- argument -> config ------------------------------------------------------------------------------
def _model_key(name: str, flag: str) -> str:
    key = _MODELS.get(name.lower())
    if key is None:
        raise ValueError(f"{flag} {name!r}: expected one of {sorted(set(_MODELS))}")
    return key


def _preset_from_args(args: argparse.Namespace, latent_only_data: bool = False) -> str | None:
    """The preset the model flags mean; `latent_only_data`: the training split holds latents and no images."""
    latent = bool(args.use_latent or args.latent_dir or args.val_latent_dir)
    derived = None
    if args.network:
        derived = _NETWORKS.get(args.network.lower())
        if derived is None:
            raise ValueError(f"--network {args.network!r}: expected one of {sorted(_NETWORKS)}")
        if latent:  # the biubug6 designs are RGB-only: the latent model of that backbone is what was asked for
            derived = f"latent-{_model_key(args.network, '--network')}"
    elif args.model:
        key = _model_key(args.model, "--model")
        if latent:
            derived = f"latent-{key}"
        elif latent_only_data and not args.preset:
            derived = f"latent-{key}"  # the latent scripts' users: latent input was their default
            logger.info("--model %s: the dataset holds latents and no images, so preset %s", args.model, derived)
        else:
            derived = f"{key}-p2p6"
    elif latent:
        derived = "latent-r50"
    if args.preset and derived and args.preset != derived:
        raise ValueError(f"--preset {args.preset} conflicts with the model flags, which mean preset {derived}")
    return args.preset or derived


def _split_of(path_value: str, flag: str, kind: str) -> tuple[Path, str]:
    """(dataset root, split name) of ``ROOT/<split>/latent``, ``ROOT/<split>`` or ``ROOT/<split>/labels.txt``."""
    path = Path(path_value).expanduser().resolve()
    if kind == "latent":
        if path.name != "latent":
            raise ValueError(f"{flag} {path_value!r}: expected ROOT/<split>/latent (the retina-modify layout)")
        split_dir = path.parent
    elif path.suffix == ".txt" or path.is_file():
        split_dir = path.parent
    else:
        split_dir = path
    return split_dir.parent, split_dir.name


def _data_overrides(args: argparse.Namespace) -> dict[str, Any]:
    roots: list[tuple[str, Path]] = []
    overrides: dict[str, Any] = {}
    given: dict[str, str] = {}  # config key -> the flag that set it
    sources = [
        ("--latent_dir", args.latent_dir, "latent", "data.train_split"),
        ("--label_dir", args.label_dir, "labels", "data.train_split"),
        ("--train_label_file", args.train_label_file, "labels", "data.train_split"),
        ("--training_dataset", args.training_dataset, "labels", "data.train_split"),
        ("--val_latent_dir", args.val_latent_dir, "latent", "data.val_split"),
        ("--val_label_file", args.val_label_file, "labels", "data.val_split"),
    ]
    label_places: list[tuple[str, str, Path, str]] = []  # label files: (flag, split key, root, split) they sit in
    for flag, value, kind, key in sources:
        if not value:
            continue
        path = Path(value).expanduser().resolve()
        if kind == "labels" and (path.suffix == ".txt" or path.is_file()):  # a label file: used as given
            labels_key = "data.train_labels" if key == "data.train_split" else "data.val_labels"
            if labels_key in overrides and overrides[labels_key] != str(path):
                raise ValueError(
                    f"{flag} {value!r}: label file differs from {overrides[labels_key]!r} ({given[labels_key]})"
                )
            overrides[labels_key] = str(path)
            given[labels_key] = flag
            label_places.append((flag, key, *_split_of(value, flag, kind)))
            continue
        root, split = _split_of(value, flag, kind)
        if key in overrides and overrides[key] != split:
            raise ValueError(f"{flag} {value!r}: split {split!r} differs from {overrides[key]!r} given by another flag")
        overrides[key] = split
        roots.append((flag, root))
    if not roots and not args.dataset_root:
        # only label files name the data (biubug6: --training_dataset ROOT/train/label.txt, images in ROOT/train/)
        for flag, key, root, split in label_places:
            if key in overrides and overrides[key] != split:
                raise ValueError(f"{flag}: split {split!r} differs from {overrides[key]!r} given by another flag")
            overrides[key] = split
            roots.append((flag, root))
    if args.dataset_root:
        roots.insert(0, ("--dataset_root", Path(args.dataset_root).expanduser().resolve()))
    for flag, root in roots[1:]:
        if root != roots[0][1]:
            raise ValueError(f"{flag} points into {root}, but {roots[0][0]} means dataset root {roots[0][1]}")
    if roots:
        overrides["data.dataset_root"] = str(roots[0][1])
    return overrides


def _latent_suffix(value: str) -> str:
    value = value.strip()
    if value.isdigit():
        return f"latent_{int(value)}.npy"
    if not value.endswith(".npy"):
        value += ".npy"
    return value


def _device(value: str) -> str:
    value = value.strip()
    if value == "":
        return "auto"
    if value.isdigit():
        return f"cuda:{value}"
    if "," in value and all(v.strip().isdigit() for v in value.split(",")):
        logger.warning("--device %s: one process uses one GPU; train on several with --nproc N", value)
        return f"cuda:{value.split(',')[0].strip()}"
    return value


def _override(pairs: list[str], key: str) -> str | None:
    """The value the ``key=value`` pairs give config key `key` (``group.name``, also spelled ``name``), or None."""
    value = None
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if sep and name.strip() in (key, key.split(".", 1)[1]):
            value = text.strip()
    return value


def _latent_only_data(data: dict[str, Any], pairs: list[str]) -> bool:
    """Whether the training split of the dataset the arguments name holds latents and no images."""
    root = _override(pairs, "data.dataset_root") or data.get("data.dataset_root")
    if not root:
        return False
    split = _override(pairs, "data.train_split") or data.get("data.train_split", "train")
    split_dir = Path(root).expanduser() / split
    return (split_dir / "latent").is_dir() and not (split_dir / "images").is_dir()


def _resumed_run_name(resume: str, out_given: bool) -> str | None:
    """``train.run_name`` of a resumed run the user did not name: None (continue in the checkpoint's folder), or
    with ``--out`` given, the checkpoint folder's name under it."""
    folder = Path(resume).expanduser().resolve().parent
    if out_given and (folder / "config.json").is_file():
        return folder.name
    return None


def _read_config(path: str) -> Config:
    """The `Config` of a config JSON holding every group (a run folder's ``config.json``): a missing group would
    silently take the defaults of another preset than the file's, so it is a `ValueError`."""
    try:
        cfg = Config.from_json(path)
    except ValueError as exc:
        message = str(exc)
        raise ValueError(message if message.startswith(str(path)) else f"--config {path}: {message}") from None
    data = json.loads(Path(path).read_text())
    groups = [f.name for f in dataclasses.fields(Config) if f.name != "preset"]
    missing = [g for g in groups if g not in data]
    if missing:
        raise ValueError(
            f"--config {path}: no {', '.join(repr(g) for g in missing)} group{'s' if len(missing) > 1 else ''} "
            f"(expected all of {', '.join(groups)}, as in a run folder's config.json); use --preset and key=value "
            "overrides for a partial setting"
        )
    return cfg


def check_checkpoints(cfg: Config) -> None:
    """Check that ``train.weight`` / ``train.resume`` fit the configured model strictly (as training loads them)
    and that a resume checkpoint holds the training state; `FileNotFoundError` / `ValueError` otherwise."""
    with torch.device("meta"):  # keys and shapes only: no memory, no init cost
        model = build_model(cfg.replace(**{"model.pretrained": "none"}))
    with warnings.catch_warnings():  # loading into meta tensors is a no-op, which torch warns about per tensor
        warnings.simplefilter("ignore", UserWarning)
        load_start_weights(model, cfg)


def _checkpoint(path: str, cache: dict[str, dict]) -> dict:
    if path not in cache:
        cache[path] = load_checkpoint(path)
    return cache[path]


def _start_weights(args: argparse.Namespace, checkpoints: dict[str, dict]) -> tuple[str | None, str | None]:
    """``(train.resume, train.weight)`` of the flags: ``--resume_net`` resumes from our checkpoint with training
    state and initialises from anything else."""
    if args.resume_net and (args.resume or args.weight):
        raise ValueError("--resume_net cannot be combined with --resume or --weight")
    resumes = bool(args.resume_net) and _checkpoint(args.resume_net, checkpoints).get("optimizer") is not None
    resume = args.resume or (args.resume_net if resumes else None)
    weight = args.weight or (args.resume_net if args.resume_net and not resumes else None)
    return resume, weight


def _base_config(
    args: argparse.Namespace, preset: str | None, resume: str | None, weight: str | None, checkpoints: dict
) -> Config:
    """The config the flags start from: ``--config``, else the preset, else the settings the ``--resume`` (or
    ``--weight``) checkpoint was trained with, else ``latent-r50``."""
    if args.config:
        cfg = _read_config(args.config)
        if preset is not None and preset != cfg.preset:
            cfg = get_preset(preset)
            logger.warning("--config %s is ignored in favour of preset %s", args.config, preset)
        return cfg
    start = resume or weight
    if preset is None and start and _checkpoint(start, checkpoints).get("config"):
        # continue (or fine-tune, as a run of its own) with the settings the checkpoint was trained with
        cfg = Config.from_dict(_checkpoint(start, checkpoints)["config"])
        cfg = cfg.replace(**{"train.resume": None, "train.weight": None})
        return cfg if resume else cfg.replace(**{"train.run_name": None})
    return get_preset(preset or "latent-r50")


def _flag_overrides(args: argparse.Namespace, amp_value: str | None) -> dict[str, Any]:
    """Config keys the option flags set."""
    simple = {
        "train.epochs": args.epochs,
        "train.batch_size": args.batch_size,
        "train.lr": args.lr,
        "train.momentum": args.momentum,
        "train.weight_decay": args.weight_decay,
        "train.gamma": args.gamma,
        "data.image_size": args.image_size,
        "train.seed": args.seed,
        "data.num_workers": args.workers,
        "train.wandb": args.wandb,
        "train.run_name": args.run_name,
        "train.out": args.out,
    }
    overrides = {k: v for k, v in simple.items() if v is not None}
    if args.device is not None:
        overrides["train.device"] = _device(args.device)
    if amp_value is not None:
        amp = _AMP.get(str(amp_value).lower())
        if amp is None:
            raise ValueError(f"--amp {amp_value!r}: expected auto, fp16, bf16 or off")
        overrides["train.amp"] = amp
    if args.freeze:
        overrides["train.freeze_backbone"] = True
    if args.no_wandb:
        if args.wandb not in (None, "disabled"):
            raise ValueError(f"--no_wandb conflicts with --wandb {args.wandb}")
        overrides["train.wandb"] = "disabled"
    if args.latent_suffix:
        overrides["data.latent_suffix"] = _latent_suffix(args.latent_suffix)
    return overrides


def build_config(args: argparse.Namespace) -> tuple[Config, int | None]:
    """The run's `Config` and the start epoch (``--resume_epoch`` for initial weights) from parsed arguments."""
    pairs = list(args.overrides or [])
    amp_value = args.amp
    if amp_value is not None and "=" in amp_value:  # a bare --amp, then an override that argparse gave to --amp
        pairs.insert(0, amp_value)
        amp_value = "auto"
    overrides: dict[str, Any] = _data_overrides(args)
    preset = _preset_from_args(args, _latent_only_data(overrides, pairs))
    checkpoints: dict[str, dict] = {}
    resume, weight = _start_weights(args, checkpoints)
    cfg = _base_config(args, preset, resume, weight, checkpoints)
    if resume and args.run_name is None and _override(pairs, "train.run_name") is None:
        # continue in the checkpoint's folder, not in <its train.out>/<its run_name> seen from here
        out_given = args.out is not None or _override(pairs, "train.out") is not None
        cfg = cfg.replace(**{"train.run_name": _resumed_run_name(resume, out_given)})
    overrides.update({k: v for k, v in {"train.weight": weight, "train.resume": resume}.items() if v is not None})
    overrides.update(_flag_overrides(args, amp_value))
    for flag in ("tuning", "download", "startfm"):
        if getattr(args, flag):
            logger.warning("--%s has no effect here (kept for compatibility with older training scripts)", flag)
    cfg = cfg.replace(**overrides)
    if pairs:
        cfg = cfg.override_pairs(pairs)
    return cfg, args.resume_epoch


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m nbsrc train")
    add_arguments(parser)
    return parser.parse_intermixed_args(argv)


def config_from_argv(argv: list[str]) -> tuple[Config, int | None]:
    """`build_config` of a ``train`` command line (without the ``train`` word)."""
    return build_config(_parse(argv))


def run(args: argparse.Namespace) -> int:
    cfg, start_epoch = build_config(args)
    if args.check_only:
        check_checkpoints(cfg)  # as fit does before it writes anything
        cfg = resolve_dataset_root_config(cfg)
        train_loader, val_loader = build_dataloaders(cfg)
        sys.stdout.write(cfg.to_json() + "\n")
        sys.stdout.write(
            f"train: {len(train_loader.dataset)} samples, {len(train_loader)} batches; "
            f"val: {len(val_loader.dataset) if val_loader is not None else 0} samples\n"
        )
        return 0
    under_torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if args.nproc > 1 and not under_torchrun:
        run_dir = launch(cfg, args.nproc, start_epoch=start_epoch)
    else:
        run_dir = fit(cfg, start_epoch=start_epoch)
    if int(os.environ.get("RANK", "0")) == 0:
        sys.stdout.write(f"run folder: {run_dir}\n")
    return 0
