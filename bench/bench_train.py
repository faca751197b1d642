"""Training-step speed: images/s and ms per step split into data, forward, matching+loss, backward and
optimizer, for ``latent-r50`` (batch 8) and ``mnet-biubug6`` (batch 32) at 640.

Data time is measured on the real training loader over the demo dataset (built once in the cache folder,
``--demo_images`` images per split). The compute phases run on those batches; when the demo latents describe
a smaller frame than 640 (or ``--synthetic`` is given), the inputs are replaced by random tensors of the
640 frame and the boxes scaled to it, so forward / loss / backward always run at 640. Every phase is timed
with the device synchronised.

Also reported:

- the matching+loss share of the step (target <= 10 %);
- matching+loss against the classic per-image reference loss (``tests/multibox_oracle.py``) on the same
  outputs and targets, on the CPU (target >= 10x);
- on CUDA: peak memory per batch size, and the largest ``latent-r50`` batch whose step fits in 15 GiB
  (a Kaggle T4);
- without a GPU, ``--estimate_memory``: the same figures estimated on the CPU. Every tensor storage of one
  ``latent-r50`` training step (parameters, gradients, momentum, activations, temporaries) is tracked as it is
  allocated and freed, under bf16 autocast (2-byte activations, as with fp16 AMP on a T4) and in float32. The
  peak is fitted as fixed + per-image bytes over two batch sizes. It leaves out what only a GPU adds (cuDNN
  workspaces, the CUDA context), so the measured CUDA figures take precedence.

    python bench/bench_train.py                       # CPU
    python bench/bench_train.py --batch 2 --steps 1 --workers 0   # a quick CPU run
    python bench/bench_train.py --device cuda --json bench_train.json
    python bench/bench_train.py --estimate_memory --presets   # the CPU estimate only (about 10 minutes)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the reference loss lives with the tests

from multibox_oracle import oracle_multibox_loss, random_targets  # noqa: E402

from nbsrc.config import get_preset  # noqa: E402
from nbsrc.engine import resolve_amp  # noqa: E402
from nbsrc.loss import build_loss, normalize_targets  # noqa: E402
from nbsrc.model import build_model  # noqa: E402
from nbsrc.optim import build_optimizer  # noqa: E402

SETUPS = {"latent-r50": 8, "mnet-biubug6": 32}  # preset: batch size
SIZE = 640
T4_BYTES = 15 * 2**30
_NO_SCALER = torch.amp.GradScaler("cpu", enabled=False)  # a disabled scaler passes loss and step through


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cfg(preset: str, batch: int, workers: int, dataset_root: str | None):
    overrides = {
        "model.pretrained": "none",
        "train.batch_size": batch,
        "data.image_size": SIZE,
        "data.num_workers": workers,
        "train.wandb": "disabled",
    }
    if dataset_root is not None:
        overrides["data.dataset_root"] = dataset_root
    return get_preset(preset, **overrides)


def _synthetic_batch(cfg, batch: int, seed: int) -> dict:
    """A collated batch in the 640 frame: random inputs, WIDER-like faces (1-60 per image, 4-300 px)."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.exp(torch.rand(batch, generator=gen) * torch.log(torch.tensor(60.0))).round().clamp(1, 60)
    t = random_targets(counts.long().tolist(), generator=gen, image_size=(SIZE, SIZE), min_side=4, max_side=300)
    if cfg.model.input_kind == "latent":
        side = SIZE // cfg.model.latent_stride
        inputs = torch.randn(batch, cfg.model.latent_channels, side, side, generator=gen)
    else:
        inputs = torch.randn(batch, 3, SIZE, SIZE, generator=gen) * 50
    return {
        "inputs": inputs,
        "boxes": t["boxes"] * SIZE,  # (B, M, 4) pixels
        "labels": t["labels"],
        "landmarks": t["landmarks"] * SIZE,  # (B, M, 5, 2) pixels
        "landmarks_valid": t["landmarks_valid"],
        "num_boxes": counts.long(),
        "names": [f"synthetic/{i}" for i in range(batch)],
    }


def _to_640(batch: dict, cfg) -> dict:
    """Replace inputs by random tensors of the 640 frame when the loader's frame is smaller; scale the boxes."""
    inputs = batch["inputs"]
    stride = cfg.model.latent_stride if cfg.model.input_kind == "latent" else 1
    height, width = inputs.shape[-2] * stride, inputs.shape[-1] * stride
    if (height, width) == (SIZE, SIZE):
        return batch
    scale = torch.tensor([SIZE / width, SIZE / height])
    out = dict(batch)
    side = SIZE // stride
    out["inputs"] = torch.randn(inputs.shape[0], inputs.shape[1], side, side) * inputs.std().clamp_min(1e-3)
    out["boxes"] = (batch["boxes"].unflatten(-1, (2, 2)) * scale).flatten(-2)  # (B, M, 4)
    out["landmarks"] = batch["landmarks"] * scale  # (B, M, 5, 2)
    return out


def _load_batches(cfg, steps: int) -> tuple[list[dict], list[float], str]:
    """`steps` batches from the real training loader and the seconds each took to arrive."""
    from nbsrc.data.loaders import build_dataloaders

    train_loader, _ = build_dataloaders(cfg)
    batches, seconds = [], []
    iterator = iter(train_loader)
    while len(batches) < steps:
        start = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(train_loader)
            continue
        seconds.append(time.perf_counter() - start)
        batches.append(batch)
    frame = tuple(batches[0]["inputs"].shape[-2:])
    return batches, seconds, f"demo loader, input {frame}"


def _step(model, loss_fn, optimizer, batch, device, amp_dtype, scaler, clip: float) -> dict:
    """One timed training step; returns per-phase milliseconds."""
    times = {}
    inputs = batch["inputs"].to(device, non_blocking=True)
    moved = {k: batch[k].to(device) for k in ("boxes", "labels", "landmarks", "landmarks_valid")}
    optimizer.zero_grad(set_to_none=True)  # as the trainer: before the forward
    _sync(device)
    start = time.perf_counter()
    with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        outputs = model(inputs)
    _sync(device)
    times["forward"] = time.perf_counter() - start
    start = time.perf_counter()
    targets = normalize_targets(moved, model.image_size(inputs), device=device)
    parts = loss_fn(outputs, model.anchors(inputs), targets)
    loss = parts["loss"]
    _sync(device)
    times["matching+loss"] = time.perf_counter() - start
    start = time.perf_counter()
    scaler.scale(loss).backward()
    _sync(device)
    times["backward"] = time.perf_counter() - start
    start = time.perf_counter()
    if clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    scaler.step(optimizer)
    scaler.update()
    _sync(device)
    times["optimizer"] = time.perf_counter() - start
    times["_outputs"] = {k: (v.detach().float().cpu() if v is not None else None) for k, v in outputs.items()}
    times["_targets"] = {k: v.cpu() for k, v in targets.items()}
    times["_anchors"] = model.anchors(inputs).cpu()
    return times


def _median_ms(fn, repeats: int) -> float:
    """Median wall time of `fn` in ms over `repeats` calls, after one untimed call (allocator warm-up)."""
    fn()
    values = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        values.append((time.perf_counter() - start) * 1000)
    return statistics.median(values)


def bench_preset(preset: str, batch: int, *, device: torch.device, steps: int, warmup: int, workers: int, args) -> dict:
    cfg = _cfg(preset, batch, workers, args.dataset_root)
    torch.manual_seed(0)
    if args.synthetic:
        batches = [_synthetic_batch(cfg, batch, seed) for seed in range(warmup + steps)]
        data_s, source = [0.0] * len(batches), "synthetic (no data loading)"
    else:
        batches, data_s, source = _load_batches(cfg, warmup + steps)
        batches = [_to_640(b, cfg) for b in batches]
    model = build_model(cfg).to(device).train()
    if device.type == "cuda" and cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    loss_fn = build_loss(cfg).to(device)
    optimizer = build_optimizer(cfg, model)
    amp_dtype = resolve_amp("auto" if args.amp else "off", device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    phases = ("forward", "matching+loss", "backward", "optimizer")
    records = []
    last = None
    for index, b in enumerate(batches):
        t = _step(model, loss_fn, optimizer, b, device, amp_dtype, scaler, cfg.train.grad_clip)
        last = t
        if index >= warmup:
            records.append({p: t[p] for p in phases} | {"data": data_s[index]})
    ms = {p: 1000 * statistics.median(r[p] for r in records) for p in ("data", *phases)}
    compute_ms = sum(ms[p] for p in phases)
    step_ms = compute_ms + ms["data"]
    result = {
        "preset": preset,
        "batch": batch,
        "device": str(device),
        "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "off",
        "data_source": source,
        "anchors": int(last["_anchors"].shape[0]),
        "ms": {k: round(v, 1) for k, v in ms.items()},
        "step_ms": round(step_ms, 1),
        "images_per_s": round(batch / (step_ms / 1000), 2),
        "loss_share": round(ms["matching+loss"] / compute_ms, 4),
    }
    if args.oracle:
        outputs, targets, anchors = last["_outputs"], last["_targets"], last["_anchors"]
        loss_cpu = build_loss(cfg)
        ours = _median_ms(lambda: loss_cpu(outputs, anchors, targets), args.oracle_repeats)
        kwargs = {
            "num_classes": cfg.model.num_classes,
            "pos_iou": cfg.loss.pos_iou,
            "force_iou": cfg.loss.force_iou,
            "neg_pos": cfg.loss.neg_pos_ratio,
            "empty_negatives": cfg.loss.empty_negatives,
            "variances": tuple(cfg.anchors.variances),
            "loc_weight": cfg.loss.loc_weight,
        }
        oracle = _median_ms(lambda: oracle_multibox_loss(outputs, anchors, targets, **kwargs), args.oracle_repeats)
        result.update(loss_cpu_ms=round(ours, 1), oracle_cpu_ms=round(oracle, 1), speedup=round(oracle / ours, 1))
    if device.type == "cuda":
        result["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    del model, optimizer
    return result


def _linear_fit(peaks: dict[int, float]) -> tuple[float, float]:
    """Least-squares ``peak = fixed + per_image * batch`` over the measured sizes; (fixed, per_image) in bytes."""
    sizes = sorted(peaks)
    if len(sizes) < 2:
        raise ValueError("a fixed + per-image fit needs peaks at two batch sizes at least")
    mean_b = sum(sizes) / len(sizes)
    mean_p = sum(peaks[b] for b in sizes) / len(sizes)
    per_image = sum((b - mean_b) * (peaks[b] - mean_p) for b in sizes) / sum((b - mean_b) ** 2 for b in sizes)
    return mean_p - per_image * mean_b, per_image


def _largest_fitting(measure, fixed: float, per_image: float, limit: float) -> int:
    """The largest batch whose measured peak is <= `limit` (0 if none): start at the fit's prediction, bracket the
    boundary in growing steps, then bisect (`measure(size)` -> bytes, or None when out of memory)."""

    def fits(size: int) -> bool:
        peak = measure(size)
        return peak is not None and peak <= limit

    guess = max(1, int((limit - fixed) // per_image))
    step = 1
    if fits(guess):
        low, high = guess, guess + 1
        while fits(high):
            low, step = high, step * 2
            high = low + step
    else:
        low, high = guess - 1, guess
        while low >= 1 and not fits(low):
            high, step = low, step * 2
            low = high - step
        low = max(low, 0)
    while high - low > 1:  # low fits (or is 0), high does not
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def memory_sweep(preset: str, sizes: list[int], device: torch.device, args) -> dict:
    """Peak CUDA memory of one fp16-AMP training step per batch size (synthetic 640 inputs), and the largest batch
    whose step stays within 15 GiB: predicted from a fixed + per-image fit, then confirmed by running it and the
    next size."""
    cfg = _cfg(preset, sizes[0], 0, None)
    model = build_model(cfg).to(device).train()
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    loss_fn = build_loss(cfg).to(device)
    optimizer = build_optimizer(cfg, model)
    amp_dtype = resolve_amp("fp16", device)  # the T4 setting
    scaler = torch.amp.GradScaler("cuda", enabled=True)
    peaks: dict[int, float | None] = {}

    def measure(size: int) -> float | None:
        if size not in peaks:
            batch = _synthetic_batch(cfg, size, seed=size)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            try:
                _step(model, loss_fn, optimizer, batch, device, amp_dtype, scaler, cfg.train.grad_clip)
                peaks[size] = float(torch.cuda.max_memory_allocated(device))
            except torch.cuda.OutOfMemoryError:
                peaks[size] = None
                optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
        return peaks[size]

    # a first float32 step creates the SGD momentum buffers (an fp16 step may be skipped by the scaler)
    _step(model, loss_fn, optimizer, _synthetic_batch(cfg, 1, seed=0), device, None, _NO_SCALER, 0.0)
    for size in sizes:
        if measure(size) is None:
            break
    measured = {s: p for s, p in peaks.items() if p is not None}
    if not measured:
        raise RuntimeError(f"{preset}: one training step of batch {sizes[0]} does not fit on {device}")
    if len(measured) >= 2:
        fixed, per_image = _linear_fit(measured)
    else:
        (size, peak), fixed = next(iter(measured.items())), 0.0
        per_image = peak / size
    largest = _largest_fitting(measure, fixed, per_image, T4_BYTES)
    return {
        "preset": preset,
        "amp": "fp16",
        "peak_gib": {s: (round(p / 2**30, 3) if p is not None else "OOM") for s, p in sorted(peaks.items())},
        "fixed_gib": round(fixed / 2**30, 3),
        "per_image_gib": round(per_image / 2**30, 3),
        "largest_batch_in_15gib": largest,
    }


def memory_estimate(preset: str, sizes: list[int], amp_dtype: torch.dtype | None) -> dict:
    """Peak bytes of one CPU training step per batch size, tracked storage by storage; fixed + per-image fit."""
    from torch.distributed._tools.mem_tracker import MemTracker

    cfg = _cfg(preset, sizes[0], 0, None)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    loss_fn = build_loss(cfg)
    optimizer = build_optimizer(cfg, model)
    cpu = torch.device("cpu")
    # one step first so that the optimizer's momentum buffers exist, as in every step after the first
    _step(model, loss_fn, optimizer, _synthetic_batch(cfg, 1, seed=0), cpu, amp_dtype, _NO_SCALER, 0.0)
    peaks: dict[int, int] = {}
    parts: dict[int, dict[str, float]] = {}
    for size in sizes:
        batch = _synthetic_batch(cfg, size, seed=size)
        tracker = MemTracker()
        tracker.track_external(model, optimizer)
        with tracker:
            _step(model, loss_fn, optimizer, batch, cpu, amp_dtype, _NO_SCALER, 0.0)
        snapshot = next(iter(tracker.get_tracker_snapshot("peak").values()))  # {kind: bytes} at the peak
        named = {str(kind).rsplit(".", 1)[-1]: value for kind, value in snapshot.items()}
        peaks[size] = named.pop("Total")
        parts[size] = {kind: round(value / 2**30, 3) for kind, value in named.items() if value >= 2**20}
    fixed, per_image = _linear_fit(peaks)
    return {
        "preset": preset,
        "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "off",
        "peak_gib": {s: round(p / 2**30, 3) for s, p in peaks.items()},
        "parts_gib": parts,
        "fixed_gib": round(fixed / 2**30, 3),
        "per_image_gib": round(per_image / 2**30, 3),
        "largest_batch_in_15gib": int((T4_BYTES - fixed) // per_image),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    parser.add_argument("--presets", nargs="*", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--batch", type=int, default=None, help="batch size for every preset (default: 8 / 32)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per preset (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--dataset_root", default=None, help="dataset (default: the demo dataset)")
    parser.add_argument("--demo_images", type=int, default=64, help="images per split of the demo dataset")
    parser.add_argument("--synthetic", action="store_true", help="random batches instead of the loader")
    parser.add_argument("--no-amp", dest="amp", action="store_false", help="float32 on CUDA")
    parser.add_argument("--no-oracle", dest="oracle", action="store_false", help="skip the reference-loss timing")
    parser.add_argument("--oracle_repeats", type=int, default=3)
    parser.add_argument("--mem_sizes", type=int, nargs="*", default=[4, 8, 16, 24, 32, 48, 64])
    parser.add_argument(
        "--estimate_memory", action="store_true", help="estimate the latent-r50 step's memory on the CPU (no GPU)"
    )
    parser.add_argument("--estimate_sizes", type=int, nargs=2, default=[1, 2], help="batch sizes of the estimate")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.presets and not args.synthetic and args.dataset_root is None:
        from nbsrc.data.demo import demo_dataset

        args.dataset_root = str(demo_dataset(images=args.demo_images))
    results: dict = {"device": str(device), "threads": torch.get_num_threads(), "presets": []}
    for preset in args.presets:
        result = bench_preset(
            preset,
            args.batch or SETUPS[preset],
            device=device,
            steps=args.steps,
            warmup=args.warmup,
            workers=args.workers,
            args=args,
        )
        results["presets"].append(result)
        ms = result["ms"]
        line = (
            f"{preset:<13} b{result['batch']:<3} {result['device']:<5} amp={result['amp']:<8} "
            f"{result['images_per_s']:8.2f} img/s  step {result['step_ms']:9.1f} ms = data {ms['data']:.1f} + "
            f"fwd {ms['forward']:.1f} + match+loss {ms['matching+loss']:.1f} + bwd {ms['backward']:.1f} + "
            f"opt {ms['optimizer']:.1f}  (loss share {100 * result['loss_share']:.1f}%)"
        )
        if "speedup" in result:
            line += (
                f"\n{'':13} loss on CPU {result['loss_cpu_ms']:.1f} ms vs reference {result['oracle_cpu_ms']:.1f} ms"
                f" -> {result['speedup']:.1f}x"
            )
        if "peak_mem_gib" in result:
            line += f"\n{'':13} peak GPU memory {result['peak_mem_gib']:.2f} GiB"
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    if args.estimate_memory:
        results["memory_estimate"] = []
        for amp_dtype in (torch.bfloat16, None):
            estimate = memory_estimate("latent-r50", args.estimate_sizes, amp_dtype)
            results["memory_estimate"].append(estimate)
            sys.stdout.write(
                f"latent-r50 amp={estimate['amp']:<8} CPU estimate: peak GiB per batch {estimate['peak_gib']} "
                f"= {estimate['fixed_gib']} + {estimate['per_image_gib']} per image; largest batch in 15 GiB: "
                f"{estimate['largest_batch_in_15gib']}\n  at the peak: {estimate['parts_gib']}\n"
            )
            sys.stdout.flush()
    if device.type == "cuda":
        sweep = memory_sweep("latent-r50", args.mem_sizes, device, args)
        results["memory"] = sweep
        sys.stdout.write(
            f"latent-r50 fp16 peak GiB per batch: {sweep['peak_gib']} = {sweep['fixed_gib']} + "
            f"{sweep['per_image_gib']} per image; largest batch in 15 GiB: {sweep['largest_batch_in_15gib']}\n"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
