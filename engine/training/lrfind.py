"""The learning-rate range test (Smith 2017, "Cyclical Learning Rates"; fastai's `lr_find`) on bottlenecks.

One short run of the softmax head whose learning rate grows exponentially from `start` to `stop`, one
step per rate, recording the loss of each step's batch. The loss first stays flat (rate too small to
move the weights), then falls (the useful range), then explodes (too large). The curve is smoothed
(an exponential moving average with bias correction, as fastai does), the sweep stops once the
smoothed loss passes DIVERGE_FACTOR times its minimum, and a range is suggested by a stated rule.

Plain numpy: a linear softmax head is a few matrix products, so no TensorFlow trace is needed and the
sweep takes well under a second on a few hundred bottlenecks.
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from engine.errors import InvalidArgument
from engine.progress import CancelFn, ProgressFn, check_cancel, emit
from engine.training.config import MAX_LEARNING_RATE, TrainConfig

PHASE = "sweeping_learning_rates"  # the progress phase; a page without a name for it shows it as words
DEFAULT_START = 1e-5
DEFAULT_STOP = 10.0
DEFAULT_STEPS = 200
MAX_STEPS = 10_000
SMOOTHING = 0.98  # fastai's beta: weight of the running average against the newest loss
DIVERGE_FACTOR = 4.0  # stop once the smoothed loss is this many times its minimum (fastai: 4)
SKIP_START = 10  # the first steps' smoothed loss is mostly the start value: not used to suggest
_INIT_STDDEV = 0.001  # the head's initialisation (engine/training/head.py, retrain.py's)
_ADAM = (0.9, 0.999, 1e-7)
RULE = (
    "Suggested range: from the rate where the smoothed loss falls fastest on its way down (steepest "
    "descent per factor of rate, before the minimum) to a tenth of the rate where it is lowest (at the "
    "minimum the rate is already about to blow up). The lower of the two starts the range."
)


@dataclass
class FinderResult:
    """The sweep: one point per step, the smoothed curve, where it stopped and the suggestion."""

    rates: list[float]
    losses: list[float]  # loss of each step's batch, before that step's update
    smoothed: list[float]
    steepest: float | None  # rate of steepest descent of the smoothed loss (per log rate)
    minimum: float | None  # rate of the lowest smoothed loss
    suggested: tuple[float, float] | None  # (low, high): steepest and minimum / 10, in order
    stopped_early: bool  # the loss diverged before `stop`
    rule: str
    start: float
    stop: float
    steps: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_sweep(start: Any, stop: Any, steps: Any) -> tuple[float, float, int]:
    """start < stop, both positive and at most 100x the largest training rate; 10 <= steps <= MAX_STEPS."""
    for key, value in (("start", start), ("stop", stop)):
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or not 0 < value <= 100 * MAX_LEARNING_RATE:
            raise InvalidArgument(
                f"{key} must be a learning rate above 0 and at most {100 * MAX_LEARNING_RATE:g}, "
                f"got {key}={value!r}"
            )
    if not start < stop:
        raise InvalidArgument(f"start must be below stop, got start={start!r} and stop={stop!r}")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or not 10 <= steps <= MAX_STEPS:
        raise InvalidArgument(f"steps must be a whole number from 10 to {MAX_STEPS:,}, got steps={steps!r}")
    return float(start), float(stop), int(steps)


def _softmax_loss_grads(x, y, kernel, bias):
    logits = x @ kernel + bias
    logits = logits - logits.max(axis=1, keepdims=True)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        exp = np.exp(logits)
        probs = exp / exp.sum(axis=1, keepdims=True)
        loss = float(-np.mean(np.log(np.maximum(probs[np.arange(len(y)), y], 1e-30))))
        dlogits = probs
        dlogits[np.arange(len(y)), y] -= 1.0
        dlogits /= len(y)
        return loss, x.T @ dlogits, dlogits.sum(axis=0)


def suggest(rates: list[float], smoothed: list[float]) -> tuple[float | None, float | None, tuple | None]:
    """(steepest, minimum, (low, high)) by RULE on a smoothed curve; Nones when it is too short."""
    pts = [(r, v) for r, v in zip(rates, smoothed, strict=True) if math.isfinite(v)][SKIP_START:]
    if len(pts) < 3:
        return None, None, None
    logs = np.log10([r for r, _ in pts])
    values = np.array([v for _, v in pts])
    lowest = int(np.argmin(values))
    minimum = pts[lowest][0]
    # the descent that leads to the minimum: past it the loss rises and wobbles on its way to divergence
    slopes = np.gradient(values[: lowest + 1], logs[: lowest + 1]) if lowest >= 2 else np.zeros(1)
    steepest = pts[int(np.argmin(slopes))][0]
    low, high = sorted((steepest, minimum / 10))
    return steepest, minimum, (low, high)


def range_test(
    train_x: np.ndarray,
    train_y: np.ndarray,
    num_classes: int,
    config: TrainConfig | None = None,
    start: float = DEFAULT_START,
    stop: float = DEFAULT_STOP,
    steps: int = DEFAULT_STEPS,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> FinderResult:
    """Sweep the learning rate from `start` to `stop` exponentially over `steps` steps of the head.

    Uses `config`'s optimizer, batch size and seed (its learning rate and schedule are what is swept).
    Emits PHASE progress events every few steps; cancel is checked with each.

    Raises:
        InvalidArgument: bad sweep bounds, shapes or labels. Cancelled: cancel() returned True.
    """
    config = config or TrainConfig()
    start, stop, steps = check_sweep(start, stop, steps)
    x = np.asarray(train_x, dtype=np.float32)
    y = np.asarray(train_y, dtype=np.int64)
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y) or not len(x):
        raise InvalidArgument(f"the finder needs (N, D) features and N labels, got {x.shape} and {y.shape}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
        raise InvalidArgument(f"a classifier needs at least 2 classes, got num_classes={num_classes!r}")
    if y.min() < 0 or y.max() >= num_classes:
        raise InvalidArgument(f"labels must be in [0, {num_classes}), got {y.min()} to {y.max()}")
    began = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    kernel = np.clip(
        rng.normal(0, _INIT_STDDEV, (x.shape[1], num_classes)), -2 * _INIT_STDDEV, 2 * _INIT_STDDEV
    )
    kernel, bias = kernel.astype(np.float32), np.zeros(num_classes, np.float32)
    moments = [np.zeros_like(kernel), np.zeros_like(bias), np.zeros_like(kernel), np.zeros_like(bias)]
    factor = (stop / start) ** (1 / (steps - 1))
    rates, losses, smoothed, best, avg = [], [], [], math.inf, 0.0
    stopped = False
    report_every = max(1, steps // 50)
    for step in range(steps):
        rate = start * factor**step
        idx = rng.integers(0, len(x), config.batch_size)  # with replacement, as the head samples
        loss, gk, gb = _softmax_loss_grads(x[idx], y[idx], kernel, bias)
        rates.append(rate)
        losses.append(loss)
        avg = SMOOTHING * avg + (1 - SMOOTHING) * loss
        current = avg / (1 - SMOOTHING ** (step + 1))  # bias-corrected, as fastai's
        smoothed.append(current)
        if step % report_every == 0 or step == steps - 1:
            emit(progress, PHASE, step + 1, steps, f"lr {rate:.2g}: loss {current:.3g}", rate=rate)
            check_cancel(cancel)
        if not math.isfinite(current) or (step > SKIP_START and current > DIVERGE_FACTOR * best):
            stopped = True
            emit(progress, PHASE, step + 1, step + 1, f"lr {rate:.2g}: the loss diverged, sweep stopped")
            break
        best = min(best, current)
        kernel, bias = _update(config.optimizer, kernel, bias, gk, gb, moments, rate, step)
    steepest, minimum, suggested = suggest(rates, smoothed)
    return FinderResult(
        rates=rates,
        losses=losses,
        smoothed=smoothed,
        steepest=steepest,
        minimum=minimum,
        suggested=suggested,
        stopped_early=stopped,
        rule=RULE,
        start=start,
        stop=stop,
        steps=steps,
        seconds=time.perf_counter() - began,
    )


def _update(optimizer: str, kernel, bias, gk, gb, moments, rate: float, step: int):
    """One SGD or Adam update (the formulas of engine/training/optim.py), moments updated in place."""
    if optimizer == "sgd":
        return kernel - rate * gk, bias - rate * gb
    beta1, beta2, eps = _ADAM
    t = step + 1
    rate_t = rate * math.sqrt(1 - beta2**t) / (1 - beta1**t)
    out = []
    for i, (p, g) in enumerate(((kernel, gk), (bias, gb))):
        moments[i] = beta1 * moments[i] + (1 - beta1) * g
        moments[i + 2] = beta2 * moments[i + 2] + (1 - beta2) * g * g
        out.append(p - rate_t * moments[i] / (np.sqrt(moments[i + 2]) + eps))
    return out[0], out[1]
