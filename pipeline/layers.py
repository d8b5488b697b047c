"""Layer primitives of the fully connected net, in pure numpy.

Every `*_forward` returns `(out, cache)`; every `*_backward(dout, cache)` returns one gradient
per input of the forward, named after it (dx, dW, db). All functions keep the dtype of their
inputs: float32 in, float32 out.

Activations are registered in `ACTIVATIONS` by name as `(forward, backward)` pairs, so the net
looks them up instead of branching on names. An activation whose derivative jumps where its
input crosses 0 is also listed in `KINKED_AT_ZERO`, which tells the gradient check to skip
perturbations that straddle such a kink.
"""

from collections.abc import Callable
from typing import Any

import numpy as np

Forward = Callable[[np.ndarray], tuple[np.ndarray, Any]]
Backward = Callable[[np.ndarray, Any], np.ndarray]


def affine_forward(
    x: np.ndarray, W: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """x (N, D) @ W (D, H) + b (H,) -> out (N, H)."""
    out = x @ W + b  # (N, H)
    return out, (x, W)


def affine_param_grads(
    dout: np.ndarray, cache: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """dW (D, H), db (H,) only: the first layer of a net needs no dx, which costs a matmul."""
    x, _ = cache
    dW = x.T @ dout  # (D, H)
    db = dout.sum(axis=0)  # (H,)
    return dW, db


def affine_backward(
    dout: np.ndarray, cache: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dout (N, H) -> dx (N, D), dW (D, H), db (H,)."""
    _, W = cache
    dx = dout @ W.T  # (N, D)
    dW, db = affine_param_grads(dout, cache)
    return dx, dW, db


def relu_forward(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """max(x, 0), any shape; the cache is x itself."""
    return np.maximum(x, 0), x


def relu_backward(dout: np.ndarray, cache: np.ndarray) -> np.ndarray:
    """dx = dout where x > 0, else 0 (the subgradient at exactly 0 is taken as 0)."""
    x = cache
    return dout * (x > 0)


def softmax_loss(scores: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of softmax(scores) (N, C) against labels y (N,) -> loss, dscores (N, C).

    The row max is subtracted first, which leaves the softmax unchanged but keeps exp() from
    overflowing; the log-probabilities are formed as shifted - log(sum(exp(shifted))), so a
    correct class with probability ~1 gives loss ~0 instead of log(0).
    """
    N = scores.shape[0]
    rows = np.arange(N)

    shifted = scores - scores.max(axis=1, keepdims=True)  # (N, C), max entry 0
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))  # (N, C)
    loss = -log_probs[rows, y].mean()

    dscores = np.exp(log_probs)  # (N, C) probabilities
    dscores[rows, y] -= 1
    dscores /= N
    return float(loss), dscores


ACTIVATIONS: dict[str, tuple[Forward, Backward]] = {
    "relu": (relu_forward, relu_backward),
}

KINKED_AT_ZERO: frozenset[str] = frozenset({"relu"})
