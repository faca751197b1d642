"""Optimizers and per-step learning-rate schedules: warm-up, x0.7 every 5 epochs, milestones, cosine; state
survives a save / load round trip."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nbsrc.config import get_preset
from nbsrc.optim import LRSchedule, build_optimizer, build_scheduler, make_optimizer, make_scheduler


def test_step_decay_every_five_epochs_after_warmup():
    s = LRSchedule(schedule="step", steps_per_epoch=10, epochs=20, step_size=5, gamma=0.7, warmup_epochs=1.0)
    assert s(0) == pytest.approx(0.1)  # warm-up starts at 0.1
    assert s(5) == pytest.approx(0.1 + 0.9 * 0.5)  # linear: halfway through the first epoch
    assert s(10) == pytest.approx(1.0)  # warm-up over
    assert s(49) == pytest.approx(1.0)  # epoch 4
    assert s(50) == pytest.approx(0.7)  # epoch 5
    assert s(100) == pytest.approx(0.49)  # epoch 10
    assert s(199) == pytest.approx(0.7**3)  # epoch 19


def test_multistep_and_constant():
    s = LRSchedule(schedule="multistep", steps_per_epoch=4, epochs=250, gamma=0.1, milestones=(190, 220))
    assert s(189 * 4 + 3) == pytest.approx(1.0)
    assert s(190 * 4) == pytest.approx(0.1)
    assert s(220 * 4) == pytest.approx(0.01)
    assert LRSchedule(schedule="constant", steps_per_epoch=3, epochs=2)(5) == 1.0


def test_cosine_goes_from_one_to_zero_after_warmup():
    s = LRSchedule(schedule="cosine", steps_per_epoch=10, epochs=10, warmup_epochs=2)
    assert s(20) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert s(100) == pytest.approx(0.0, abs=1e-12)
    values = [s(i) for i in range(20, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"schedule": "linear"}, "schedule"),
        ({"steps_per_epoch": 0}, "steps_per_epoch"),
        ({"gamma": 0.0}, "gamma"),
        ({"warmup_epochs": -1}, "warmup"),
    ],
)
def test_bad_schedule_arguments(kwargs, match):
    args = {"schedule": "step", "steps_per_epoch": 10, "epochs": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        LRSchedule(**args)


def test_optimizers_skip_frozen_parameters():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    for p in net[0].parameters():
        p.requires_grad_(False)
    sgd = make_optimizer(net.named_parameters(), name="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4)
    assert sum(len(g["params"]) for g in sgd.param_groups) == 4  # bn weight+bias, conv2 weight+bias
    adamw = make_optimizer(net.named_parameters(), name="adamw", lr=0.1, weight_decay=0.05)
    decays = sorted(g["weight_decay"] for g in adamw.param_groups)
    assert decays == [0.0, 0.05]  # no decay on biases and norm weights
    for p in net.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="trainable"):
        make_optimizer(net.named_parameters())


def test_scheduler_is_per_step_and_resumes_exactly():
    cfg = get_preset("latent-r18", **{"train.lr": 0.01, "train.warmup_epochs": 0.5, "train.epochs": 12})
    net = nn.Linear(3, 2)
    opt = build_optimizer(cfg, net)
    sched = build_scheduler(cfg, opt, steps_per_epoch=4)
    lrs = []
    for _ in range(30):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[1] == pytest.approx(0.01)  # warm-up of 2 steps is over
    assert lrs[19] == pytest.approx(0.007)  # step 20 = epoch 5

    net2 = nn.Linear(3, 2)
    opt2 = build_optimizer(cfg, net2)
    sched2 = build_scheduler(cfg, opt2, steps_per_epoch=4)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    for _ in range(5):
        opt.step()
        sched.step()
        opt2.step()
        sched2.step()
        assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])


@pytest.mark.parametrize("stop", [1, 3, 5, 13])
def test_a_scheduler_rebuilt_at_a_step_gives_the_uninterrupted_rates(stop):
    # warm-up over 1.5 epochs, then cosine: a resume stops inside the warm-up, at its end and in the decay
    cfg = get_preset("latent-r18", **{"train.lr": 0.01, "train.warmup_epochs": 1.5, "train.schedule": "cosine"})
    cfg = cfg.replace(**{"train.epochs": 5})
    net = nn.Linear(3, 2)
    opt = build_optimizer(cfg, net)
    sched = build_scheduler(cfg, opt, steps_per_epoch=4)
    rates, states = [], {}
    for step in range(20):
        states[step] = opt.state_dict()
        rates.append(opt.param_groups[0]["lr"])  # the rate step `step` uses
        opt.step()
        sched.step()

    resumed_opt = build_optimizer(cfg, nn.Linear(3, 2))
    resumed_opt.load_state_dict(states[stop])  # as a checkpoint saved after `stop` steps holds it
    resumed = build_scheduler(cfg, resumed_opt, steps_per_epoch=4, step=stop)
    again = []
    for _ in range(stop, 20):
        again.append(resumed_opt.param_groups[0]["lr"])
        resumed_opt.step()
        resumed.step()
    assert again == rates[stop:]  # exactly

    # weights counted as trained for `stop` steps (a fresh optimizer): the schedule starts there
    fresh = build_optimizer(cfg, nn.Linear(3, 2))
    build_scheduler(cfg, fresh, steps_per_epoch=4, step=stop)
    assert fresh.param_groups[0]["lr"] == rates[stop]


def test_make_scheduler_sets_the_first_rate():
    net = nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    make_scheduler(opt, LRSchedule(schedule="constant", steps_per_epoch=10, epochs=1, warmup_epochs=1.0))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("preset", "batch", "epochs", "milestones"),
    [("mnet-biubug6", 32, 250, (190, 220)), ("r50-biubug6", 24, 100, (70, 90)), ("mnet-2cls", 24, 250, (190, 220))],
)
def test_the_biubug6_presets_train_with_biubug6s_recipe(preset, batch, epochs, milestones):
    # train.py: lr = 1e-3 * 0.1 ** step_index, step_index += 1 at each decay epoch, no warm-up (warmup_epoch = -1)
    cfg = get_preset(preset)
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.train.optimizer) == (batch, epochs, "sgd")
    assert (cfg.train.momentum, cfg.train.weight_decay) == (0.9, 5e-4)
    net = nn.Linear(3, 2)
    opt = build_optimizer(cfg, net)
    sched = build_scheduler(cfg, opt, steps_per_epoch=3)
    for epoch in range(epochs):
        step_index = sum(epoch >= m for m in milestones)
        for _ in range(3):
            assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.1**step_index, rel=1e-9), epoch
            opt.step()
            sched.step()
