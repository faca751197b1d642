"""A notebook's parameters: their declaration, their checking, and the `Config` they describe.

The first cell after a notebook's ``parameters`` cell checks the values given (by papermill, the runner or a Kaggle
build) in place against the cell's annotations and builds the config from them:

- ``cfg = notebook_config(globals())`` starts from the ``preset``, with the dataset found from ``dataset_root``
  (none when ``faces`` reads WIDER FACE's own labels), the parameters named in `PRESET_KEYS`, ``train.out`` =
  ``<run folder>/train``, then ``resume``, ``overrides`` (``key=value`` pairs), ``run_name`` and
  ``pretrained='auto'`` resolved, each when the notebook declares it;
- ``detector, weights = notebook_detector(globals())`` (a notebook with a ``checkpoint`` parameter) reads the
  checkpoint once: its model, with its config for prediction, which keeps its dataset and takes this notebook's
  original-size sources and `EVALUATION_KEYS`.

Torch and OpenCV are imported when called, so that ``import nbsrc`` stays light.
"""

from __future__ import annotations

import functools
import operator
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbsrc import paths
from nbsrc.config import Config, coerce_value, get_preset

if TYPE_CHECKING:
    from nbsrc.detector import Detector

__all__ = [
    "EVALUATION_KEYS",
    "PRESET_KEYS",
    "NotebookParameter",
    "annotation_name",
    "annotation_type",
    "check_given_parameters",
    "check_value",
    "notebook_config",
    "notebook_detector",
    "parameter_annotations",
]

# parameters that are config settings, for notebooks built from a preset
PRESET_KEYS = {
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "latent_suffix": "data.latent_suffix",
    "all_rates": "data.all_rates",
    "num_workers": "data.num_workers",
    "device": "train.device",
    "amp": "train.amp",
    "pretrained": "model.pretrained",
    "freeze_backbone": "train.freeze_backbone",
    "weight": "train.weight",
    "max_images": "data.max_images",
    "max_steps_per_epoch": "train.max_steps_per_epoch",
    "wandb": "train.wandb",
    "keep_epochs": "train.keep_epochs",
    "gt_dir": "eval.gt_dir",
}
# parameters that are config settings, for notebooks evaluating a checkpoint (the others keep its training values)
EVALUATION_KEYS = {"test_scale": "eval.test_scale", "gt_dir": "eval.gt_dir"}


@dataclass(frozen=True)
class NotebookParameter:
    """One entry of a notebook's ``parameters`` cell."""

    name: str
    type_name: str  # annotation as written, e.g. "int", "Optional[str]" (papermill's parser reads no "str | None")
    default: str  # default as written
    help: str  # the trailing comment


# ---- checking -----------------------------------------------------------------------------------
_ANNOTATION_TYPES = {"bool": bool, "int": int, "float": float, "str": str, "None": type(None)}


def annotation_type(type_name: str) -> Any:
    """The type an annotation such as ``Optional[str]`` names; `Any` (unchecked) for an unusual one."""
    text = type_name.replace(" ", "")
    if text.startswith("Optional[") and text.endswith("]"):
        text = text[len("Optional[") : -1] + "|None"
    parts = text.split("|")
    if not all(part in _ANNOTATION_TYPES for part in parts):
        return Any
    return functools.reduce(operator.or_, (_ANNOTATION_TYPES[part] for part in parts))  # int | None


def annotation_name(hint: Any) -> str:
    """``Optional[str]`` -> "Optional[str]", as a parameters cell spells it; a text annotation stays as it is."""
    if isinstance(hint, str):
        return hint
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Union and len(args) == 1 and len(typing.get_args(hint)) == 2:
        return f"Optional[{annotation_name(args[0])}]"
    return getattr(hint, "__name__", str(hint))


def check_value(notebook: str, param: NotebookParameter, value: Any) -> Any:
    """`value` converted to the parameter's declared type (`nbsrc.config.coerce_value`); a `ValueError` names the
    notebook, the parameter and what it expects."""
    try:
        return coerce_value(value, annotation_type(param.type_name), param.name)
    except ValueError:
        expected = f"{param.type_name} (default {param.default}; None, null or ~ for none)"
        raise ValueError(
            f"notebook {notebook}: parameter {param.name!r} expects {expected}, got {type(value).__name__} {value!r}"
        ) from None


def parameter_annotations(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """A notebook namespace's annotations: its parameters cell's names and types."""
    annotations = namespace.get("__annotations__")
    if annotations is None and callable(namespace.get("__annotate__")):  # Python >= 3.14 evaluates them lazily
        annotations = namespace["__annotate__"](1)  # annotationlib.Format.VALUE
    return dict(annotations or {})


def check_given_parameters(namespace: dict[str, Any], notebook: str = "this notebook") -> dict[str, Any]:
    """Convert, in place, the values a notebook was given to its parameters cell's annotations, as the runner does,
    and return them. Plain ``papermill -p smoke false`` passes the text "false", which would read as true; a value
    that cannot be converted (``-p epochs many``) raises `ValueError` naming the parameter."""
    given = {}
    for name, hint in parameter_annotations(namespace).items():
        if name in namespace:
            param = NotebookParameter(name, annotation_name(hint), "", "")
            namespace[name] = given[name] = check_value(notebook, param, namespace[name])
    return given


# ---- the config ---------------------------------------------------------------------------------
def notebook_config(namespace: dict[str, Any]) -> Config:
    """Check the parameters a notebook was given (in place) and return the config they describe: a `ValueError`
    names a parameter of the wrong type or a setting out of range, a `FileNotFoundError` a missing dataset or
    checkpoint."""
    given = check_given_parameters(namespace)
    if "checkpoint" in given:
        return _evaluation_detector(given, device="cpu")[0].cfg
    return _preset_config(given, paths.run_folder(given.get("run_dir")))


def notebook_detector(namespace: dict[str, Any]) -> tuple[Detector, Path]:
    """`notebook_config` for a notebook evaluating a checkpoint: the checkpoint's `nbsrc.detector.Detector` on the
    ``device`` parameter, with that config, and the checkpoint's path."""
    given = check_given_parameters(namespace)
    return _evaluation_detector(given, device=given.get("device", "cpu"))


def _data_settings(dataset_root: str | Path | None, given: Mapping[str, Any], label_frame: int | None) -> dict:
    return paths.data_settings(
        dataset_root, images_root=given.get("images_root"), sizes_csv=given.get("sizes_csv"), label_frame=label_frame
    )


def _preset_config(given: Mapping[str, Any], run: Path) -> Config:
    from nbsrc.data.demo import resolve_dataset_root  # OpenCV
    from nbsrc.pretrained import resolve_pretrained  # torch

    root = None
    if given.get("faces", "dataset") == "dataset":  # faces="wider" reads WIDER FACE's own labels: no dataset
        root = resolve_dataset_root(given.get("dataset_root"), smoke=bool(given.get("smoke", False)))
    cfg = get_preset(given["preset"], **_data_settings(root, given, given.get("label_frame")))
    settings = {key: given[name] for name, key in PRESET_KEYS.items() if name in given}
    cfg = cfg.replace(**settings, **{"train.out": str(run / "train")})
    if "resume" in given:
        resume = paths.resolve_resume(given["resume"], run, run_name=given.get("run_name"), preset=given["preset"])
        cfg = cfg.replace(resume=resume)
    cfg = cfg.override_pairs(str(given.get("overrides") or "").split())
    if "run_name" in given:
        cfg = cfg.replace(run_name=given["run_name"])
    if "pretrained" in given:
        cfg = cfg.replace(**{"model.pretrained": resolve_pretrained(cfg.model.pretrained, cfg.model.backbone)})
    return cfg


def _evaluation_detector(given: Mapping[str, Any], device: str) -> tuple[Detector, Path]:
    from nbsrc.detector import Detector  # torch

    run = paths.run_folder(given.get("run_dir"))
    weights = paths.resolve_checkpoint(given["checkpoint"], run)
    if weights is None:
        raise FileNotFoundError(f"no checkpoint: pass checkpoint=..., or run 03_training with run_dir={run}")
    detector = Detector.from_checkpoint(weights, preset=given.get("preset"), device=device)
    trained = detector.cfg.data  # its dataset_root stays (prediction compares it with the one predicted)
    label_frame = given.get("label_frame") or trained.label_frame
    settings = {key: given[name] for name, key in EVALUATION_KEYS.items() if name in given}
    detector.cfg = detector.cfg.replace(**_data_settings(trained.dataset_root, given, label_frame), **settings)
    return detector, weights
