"""Optimizers and learning-rate schedules of the trainer.

The schedule is a per-step multiplier of the peak learning rate (`LRSchedule`) in a `LambdaLR` that the trainer
steps after every optimizer step; a resumed run rebuilds it at the step it stopped at (`build_scheduler`) and
continues with the rates of an uninterrupted run.

Schedules (``epoch`` = completed epochs, ``t`` = fractional epochs):

- ``step``: ``gamma ** (epoch // step_size)`` (the ancestors' x0.7 every 5 epochs);
- ``multistep``: ``gamma ** (number of milestones <= epoch)`` (biubug6: x0.1 at 190 and 220);
- ``cosine``: ``0.5 * (1 + cos(pi * progress))`` from the end of warm-up to the last step;
- ``constant``: 1.

A linear warm-up from ``warmup_start`` to 1 over ``warmup_epochs`` multiplies all of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from nbsrc.config import Config

__all__ = ["LRSchedule", "build_optimizer", "build_scheduler", "make_optimizer", "make_scheduler"]

SCHEDULES = ("step", "multistep", "cosine", "constant")


class LRSchedule:
    """Learning-rate multiplier as a function of the optimizer step (a picklable callable for `LambdaLR`); the
    arguments are the ``train.*`` settings of the same names, `epochs` the run's total (cosine reaches 0 there),
    `warmup_start` the multiplier at step 0."""

    def __init__(
        self,
        *,
        schedule: str = "step",
        steps_per_epoch: int,
        epochs: int,
        step_size: int = 5,
        gamma: float = 0.7,
        milestones: Iterable[int] = (),
        warmup_epochs: float = 0.0,
        warmup_start: float = 0.1,
    ) -> None:
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if step_size < 1:
            raise ValueError(f"step_size must be >= 1, got {step_size}")
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        if not 0 < warmup_start <= 1:
            raise ValueError(f"warmup_start must be in (0, 1], got {warmup_start}")
        self.schedule = schedule
        self.steps_per_epoch = int(steps_per_epoch)
        self.epochs = int(epochs)
        self.step_size = int(step_size)
        self.gamma = float(gamma)
        self.milestones = sorted(int(m) for m in milestones)
        self.warmup_steps = int(round(warmup_epochs * steps_per_epoch))
        self.warmup_start = float(warmup_start)

    def decay(self, step: int) -> float:
        """The schedule's multiplier at `step`, without warm-up."""
        epoch = step // self.steps_per_epoch
        if self.schedule == "step":
            return self.gamma ** (epoch // self.step_size)
        if self.schedule == "multistep":
            return self.gamma ** sum(1 for m in self.milestones if epoch >= m)
        if self.schedule == "cosine":
            span = max(1, self.epochs * self.steps_per_epoch - self.warmup_steps)
            progress = min(1.0, max(0.0, (step - self.warmup_steps) / span))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    def warmup(self, step: int) -> float:
        """The warm-up multiplier at `step` (1 after the warm-up)."""
        if step >= self.warmup_steps:
            return 1.0
        return self.warmup_start + (1.0 - self.warmup_start) * step / self.warmup_steps

    def __call__(self, step: int) -> float:
        return self.warmup(step) * self.decay(step)


def make_optimizer(
    params: Iterable[tuple[str, nn.Parameter]],
    *,
    name: str = "sgd",
    lr: float = 1e-3,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
) -> torch.optim.Optimizer:
    """SGD (the published recipe: momentum, weight decay on every parameter) or AdamW (`momentum` as beta1, no
    decay on biases and normalisation weights) over the ``(name, parameter)`` pairs that require grad."""
    named = [(n, p) for n, p in params if p.requires_grad]
    if not named:
        raise ValueError("no trainable parameters (is everything frozen?)")
    if name == "sgd":
        return torch.optim.SGD([p for _, p in named], lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        decay = [p for n, p in named if p.ndim > 1]
        no_decay = [p for n, p in named if p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(momentum, 0.999))
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {name!r}")


def make_scheduler(
    optimizer: torch.optim.Optimizer, schedule: LRSchedule, step: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A `LambdaLR` applying `schedule` per optimizer step, standing at `step` (optimizer steps already taken): the
    rate is then the peak rate times ``schedule(step)``, the peak being each group's ``initial_lr`` when the
    optimizer carries one (a state loaded from a checkpoint), else its current rate."""
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=schedule, last_epoch=step - 1)


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer of ``cfg.train`` over the trainable parameters of `model`."""
    t = cfg.train
    return make_optimizer(
        model.named_parameters(), name=t.optimizer, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay
    )


def build_scheduler(
    cfg: Config, optimizer: torch.optim.Optimizer, steps_per_epoch: int, step: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-step schedule of ``cfg.train``, standing at `step` (see `make_scheduler`)."""
    t = cfg.train
    schedule = LRSchedule(
        schedule=t.schedule,
        steps_per_epoch=steps_per_epoch,
        epochs=t.epochs,
        step_size=t.step_size,
        gamma=t.gamma,
        milestones=t.milestones,
        warmup_epochs=t.warmup_epochs,
    )
    return make_scheduler(optimizer, schedule, step)
