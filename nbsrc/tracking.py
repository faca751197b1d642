"""Experiment tracking with Weights & Biases, safe everywhere: `Tracker` logs scalars, detections on images and
checkpoints as artifacts, or does nothing.

- ``disabled`` never imports wandb.
- ``offline`` writes ``<run_dir>/wandb/offline-run-*`` (upload later with ``wandb sync``): no key, no network.
- ``online`` needs an API key (``WANDB_API_KEY``, a ``wandb login`` entry in ``~/.netrc``, or the attached Kaggle
  secret of that name); without one, or when the login fails, it falls back to ``offline`` with one warning, so a
  run never dies or hangs on a login prompt. Without wandb installed nothing is tracked (one warning).
"""

from __future__ import annotations

import logging
import netrc
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nbsrc.config import Config
from nbsrc.data.records import CLASS_NAMES
from nbsrc.paths import on_kaggle

__all__ = ["MODES", "Tracker", "build_tracker", "find_wandb_key", "init_tracker"]

logger = logging.getLogger(__name__)

MODES = ("online", "offline", "disabled")
KEY_NAME = "WANDB_API_KEY"  # environment variable and Kaggle secret label


def _netrc_has_key() -> bool:
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if not path.is_file():
        return False
    try:
        entries = netrc.netrc(str(path)).hosts
    except (netrc.NetrcParseError, OSError) as exc:
        logger.warning("%s: unreadable (%s); ignoring it for the W&B key", path, exc)
        return False
    return any("wandb" in host for host in entries)


def _kaggle_secret(label: str) -> str | None:
    """The value of a Kaggle notebook secret, or None when not on Kaggle or the secret is not attached."""
    if not on_kaggle():
        return None
    try:
        from kaggle_secrets import UserSecretsClient
    except ImportError:
        return None
    try:
        value = UserSecretsClient().get_secret(label)
    except Exception as exc:  # noqa: BLE001 - an unattached secret raises a backend-specific error
        logger.info("Kaggle secret %s is not available (%s: %s)", label, type(exc).__name__, exc)
        return None
    return value or None


def find_wandb_key() -> str | None:
    """Where a W&B key is configured: ``"env"``, ``"netrc"``, ``"kaggle"`` (the secret is then exported to
    ``WANDB_API_KEY`` for wandb to find), or None when there is none."""
    if os.environ.get(KEY_NAME):
        return "env"
    if _netrc_has_key():
        return "netrc"
    secret = _kaggle_secret(KEY_NAME)
    if secret:
        os.environ[KEY_NAME] = secret
        return "kaggle"
    return None


class Tracker:
    """A W&B run, or nothing (`run` None, ``mode == "disabled"``); every method is safe in every mode. `mode` is
    the mode in use (``online`` may have fallen back to ``offline``)."""

    def __init__(self, run: Any = None, mode: str = "disabled") -> None:
        self.run = run
        self.mode = mode if run is not None else "disabled"

    @property
    def enabled(self) -> bool:
        return self.run is not None

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log scalar metrics (non-numeric values are skipped)."""
        if self.run is None:
            return
        values = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, np.floating, np.integer))}
        if values:
            self.run.log(values, step=step)

    def log_detections(
        self,
        key: str,
        images: Sequence[np.ndarray],
        detections: Sequence[Mapping[str, Any]],
        ground_truth: Sequence[np.ndarray] | None = None,
        *,
        captions: Sequence[str] | None = None,
        step: int | None = None,
        max_images: int = 8,
    ) -> None:
        """Log up to `max_images` images with their boxes as ``wandb.Image`` objects under `key`.

        `images` are ``uint8 [H, W, 3]`` RGB (or ``[H, W]`` gray) in the boxes' pixel frame; `detections` per image
        ``boxes [N, 4]`` xyxy pixels, ``scores [N]``, ``labels [N]`` (arrays or tensors); `ground_truth` per image
        ``[M, 4]`` xyxy pixels.
        """
        if self.run is None:
            return
        import wandb

        logged = []
        for index, image in enumerate(list(images)[:max_images]):
            det = detections[index]
            boxes = {"predictions": {"box_data": _box_data(det), "class_labels": CLASS_NAMES}}
            if ground_truth is not None:
                gt = np.asarray(ground_truth[index], dtype=np.float64).reshape(-1, 4)  # (M, 4)
                gt_data = [_box(b, 1, "gt", None) for b in gt]
                boxes["ground_truth"] = {"box_data": gt_data, "class_labels": CLASS_NAMES}
            caption = captions[index] if captions is not None else None
            logged.append(wandb.Image(np.asarray(image), boxes=boxes, caption=caption))
        if logged:
            self.run.log({key: logged}, step=step)

    def log_checkpoint(
        self,
        path: str | Path,
        *,
        name: str,
        aliases: Sequence[str] = ("latest",),
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Log a checkpoint file as a ``model`` artifact (queued for ``wandb sync`` when offline)."""
        if self.run is None:
            return
        import wandb

        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "model"  # the characters W&B allows
        artifact = wandb.Artifact(name, type="model", metadata=dict(metadata or {}))
        artifact.add_file(str(path))
        self.run.log_artifact(artifact, aliases=list(aliases))

    def summary(self, values: Mapping[str, Any]) -> None:
        """Set run summary values (final metrics)."""
        if self.run is None:
            return
        for key, value in values.items():
            self.run.summary[key] = value

    def finish(self) -> None:
        """Close the run (idempotent)."""
        if self.run is None:
            return
        run, self.run = self.run, None
        run.finish()


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().float().cpu().numpy()
    return np.asarray(value)


def _box(box: np.ndarray, label: int, caption: str, score: float | None) -> dict[str, Any]:
    x1, y1, x2, y2 = (float(v) for v in box)
    item: dict[str, Any] = {
        "position": {"minX": x1, "minY": y1, "maxX": x2, "maxY": y2},
        "domain": "pixel",
        "class_id": int(label),
        "box_caption": caption,
    }
    if score is not None:
        item["scores"] = {"conf": float(score)}
    return item


def _box_data(det: Mapping[str, Any]) -> list[dict[str, Any]]:
    boxes = _to_numpy(det["boxes"]).reshape(-1, 4)  # (N, 4)
    scores = _to_numpy(det["scores"]).reshape(-1)  # (N,)
    labels = _to_numpy(det.get("labels", np.ones(len(boxes)))).reshape(-1)  # (N,)
    return [
        _box(b, int(lab), f"{CLASS_NAMES.get(int(lab), int(lab))} {s:.2f}", s)
        for b, s, lab in zip(boxes, scores, labels)
    ]


def init_tracker(
    mode: str = "disabled",
    *,
    project: str = "retinaface-latent",
    run_name: str | None = None,
    config: Mapping[str, Any] | None = None,
    run_dir: str | Path | None = None,
    group: str | None = None,
) -> Tracker:
    """Start a W&B run in `mode` (see the module docstring for the fallbacks), its ``wandb/`` files under `run_dir`
    (default: the working directory)."""
    if mode not in MODES:
        raise ValueError(f"wandb mode must be one of {list(MODES)}, got {mode!r}")
    if mode == "disabled":
        return Tracker()
    try:
        import wandb
    except ImportError:
        logger.warning("W&B %s mode requested but wandb is not installed (pip install wandb); not tracking", mode)
        return Tracker()
    if mode == "online" and find_wandb_key() is None:
        logger.warning(
            "W&B online mode requested but no API key is configured (set %s, run 'wandb login', or attach the "
            "%s secret on Kaggle); logging offline instead (upload later with 'wandb sync')",
            KEY_NAME,
            KEY_NAME,
        )
        mode = "offline"
    kwargs: dict[str, Any] = {
        "project": project,
        "name": run_name,
        "config": dict(config or {}),
        "group": group,
        "reinit": "finish_previous",  # wandb >= 0.19.10
    }
    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        kwargs["dir"] = str(run_dir)
    try:
        run = wandb.init(mode=mode, **kwargs)
    except (wandb.errors.UsageError, wandb.errors.AuthenticationError, wandb.errors.CommError) as exc:
        if mode != "online":
            raise
        logger.warning("W&B online login failed (%s); logging offline instead", exc)
        mode = "offline"
        run = wandb.init(mode=mode, **kwargs)
    logger.info("W&B run %s (%s) in %s", run.name, mode, run.dir)
    return Tracker(run, mode)


def build_tracker(cfg: Config, run_dir: str | Path | None = None, run_name: str | None = None) -> Tracker:
    """The tracker of ``cfg.train`` (mode, project) for a run folder; the whole config is stored with the run."""
    return init_tracker(
        cfg.train.wandb,
        project=cfg.train.wandb_project,
        run_name=run_name or cfg.train.run_name,
        config=cfg.to_dict(),
        run_dir=run_dir,
    )
