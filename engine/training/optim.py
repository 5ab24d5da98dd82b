"""Optimiser maths written with tf ops: learning-rate schedules and functional SGD/Adam updates.

Functional (parameters in, parameters out) so they run inside a compiled while loop (the head) as
well as in an eager step that assigns variables (fine-tuning).
"""

from __future__ import annotations

import math

# Adam's constants: Keras' defaults (beta_1, beta_2, epsilon)
_ADAM = (0.9, 0.999, 1e-7)


def schedule_lr(schedule: str, lr, end, step, total):
    """The learning rate at 0-based `step` of `total` steps; decays end at `lr * end`.

    `lr`, `end`, `step` and `total` may be tensors, so one trace serves every rate.
    """
    import tensorflow as tf

    if schedule == "constant":
        return lr
    frac = tf.cast(step, tf.float32) / tf.cast(total, tf.float32)
    if schedule == "exponential":
        return lr * tf.pow(end, frac)
    return lr * (end + (1.0 - end) * 0.5 * (1.0 + tf.cos(math.pi * frac)))


def schedule_curve(schedule: str, lr: float, end: float, total: int, points: int = 200) -> list[dict]:
    """The rate `schedule_lr` gives, as rows {"step", "learning_rate"} at up to `points` steps of `total`.

    The same formulas in plain Python (no TensorFlow), for charts of rate against step; step is
    1-based like a history row's (the rate used by that training step).
    """
    total = max(1, int(total))
    stride = max(1, total // max(1, points))
    rows = []
    for step in sorted({*range(0, total, stride), total - 1}):
        frac = step / total
        if schedule == "constant":
            rate = lr
        elif schedule == "exponential":
            rate = lr * end**frac
        else:
            rate = lr * (end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * frac)))
        rows.append({"step": step + 1, "learning_rate": rate})
    return rows


def optimizer_update(optimizer: str, params, grads, slots, lr, step):
    """One SGD or Adam update written with tf ops, functional so it runs inside a while loop.

    Args:
        params, grads: lists of tensors. slots: (first moments, second moments), lists like params
            (carried but unused by SGD, so the loop state has one shape for both optimizers).
        lr: learning rate tensor. step: 0-based step index tensor.

    Returns:
        (new params, new slots).
    """
    import tensorflow as tf

    if optimizer == "sgd":
        return [p - lr * g for p, g in zip(params, grads, strict=True)], slots
    beta1, beta2, eps = _ADAM
    t = tf.cast(step, tf.float32) + 1.0
    lr_t = lr * tf.sqrt(1.0 - tf.pow(beta2, t)) / (1.0 - tf.pow(beta1, t))
    ms = [beta1 * m + (1.0 - beta1) * g for m, g in zip(slots[0], grads, strict=True)]
    vs = [beta2 * v + (1.0 - beta2) * tf.square(g) for v, g in zip(slots[1], grads, strict=True)]
    new = [p - lr_t * m / (tf.sqrt(v) + eps) for p, m, v in zip(params, ms, vs, strict=True)]
    return new, (ms, vs)
