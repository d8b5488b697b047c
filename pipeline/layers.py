"""Layer primitives of the fully connected net, in pure numpy.

Every `*_forward` returns `(out, cache)`; every `*_backward(dout, cache)` returns one gradient
per input of the forward, named after it (dx, dW, db, ...). All functions keep the dtype of
their inputs: float32 in, float32 out. Batched over the rows of x, never looping over them.

`ACTIVATIONS` registers the elementwise activations without parameters by name, as
`(forward, backward)` pairs with their default hyperparameters. PReLU (a learned slope per
unit) and maxout (k affine outputs per unit) are not elementwise maps of a fixed shape, so
they are not in it; `pipeline.net` binds every activation, these two included.
"""

from collections.abc import Callable
from typing import Any, Literal

import numpy as np

Forward = Callable[[np.ndarray], tuple[np.ndarray, Any]]
Backward = Callable[[np.ndarray, Any], np.ndarray]
Mode = Literal["train", "test"]

LEAKY_SLOPE = 0.01
ELU_ALPHA = 1.0
MAXOUT_PIECES = 2


# ---- affine and loss ---------------------------------------------------------------------

def affine_forward(
    x: np.ndarray, W: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """x (N, D) @ W (D, H) + b (H,) -> out (N, H)."""
    out = x @ W  # (N, H)
    out += b  # in place: same sum as x @ W + b, one temporary fewer
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


# ---- elementwise activations ---------------------------------------------------------------

def sigmoid_forward(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1 / (1 + exp(-x)), any shape; the cache is the output.

    Written with exp(-|x|) <= 1 only, so no exp() overflows for large |x|: for x >= 0 it is
    1 / (1 + e), for x < 0 the equal e / (1 + e), with e = exp(-|x|).
    """
    e = np.exp(-np.abs(x))
    out = np.where(x >= 0, 1, e) / (1 + e)
    return out, out


def sigmoid_backward(dout: np.ndarray, cache: np.ndarray) -> np.ndarray:
    """dx = dout * s (1 - s), from the cached output s."""
    s = cache
    return dout * s * (1 - s)


def tanh_forward(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """tanh(x), any shape; the cache is the output."""
    out = np.tanh(x)
    return out, out


def tanh_backward(dout: np.ndarray, cache: np.ndarray) -> np.ndarray:
    """dx = dout * (1 - t^2), from the cached output t."""
    t = cache
    return dout * (1 - t * t)


def relu_forward(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """max(x, 0), any shape; the cache is x itself."""
    return np.maximum(x, 0), x


def relu_backward(dout: np.ndarray, cache: np.ndarray) -> np.ndarray:
    """dx = dout where x > 0, else 0 (the subgradient at exactly 0 is taken as 0)."""
    x = cache
    return dout * (x > 0)


def leaky_relu_forward(
    x: np.ndarray, slope: float = LEAKY_SLOPE
) -> tuple[np.ndarray, tuple[np.ndarray, float]]:
    """x where x > 0, else slope * x; the slope is fixed (0.01 by default)."""
    slope = float(slope)  # a numpy float64 slope would upcast float32 inputs
    return np.where(x > 0, x, slope * x), (x, slope)


def leaky_relu_backward(dout: np.ndarray, cache: tuple[np.ndarray, float]) -> np.ndarray:
    """dx = dout where x > 0, else slope * dout."""
    x, slope = cache
    return np.where(x > 0, dout, slope * dout)


def elu_forward(
    x: np.ndarray, alpha: float = ELU_ALPHA
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, float]]:
    """x where x > 0, else alpha (exp(x) - 1).

    expm1 sees min(x, 0) only: exp() of a large positive x would overflow in the branch
    np.where throws away, and expm1 keeps the digits of alpha x near 0 that exp(x) - 1 loses.
    """
    alpha = float(alpha)
    negative = alpha * np.expm1(np.minimum(x, 0))
    out = np.where(x > 0, x, negative)
    return out, (x, out, alpha)


def elu_backward(dout: np.ndarray, cache: tuple[np.ndarray, np.ndarray, float]) -> np.ndarray:
    """dx = dout where x > 0, else dout * alpha exp(x) = dout * (out + alpha)."""
    x, out, alpha = cache
    return np.where(x > 0, dout, dout * (out + alpha))


ACTIVATIONS: dict[str, tuple[Forward, Backward]] = {
    "sigmoid": (sigmoid_forward, sigmoid_backward),
    "tanh": (tanh_forward, tanh_backward),
    "relu": (relu_forward, relu_backward),
    "leaky_relu": (leaky_relu_forward, leaky_relu_backward),
    "elu": (elu_forward, elu_backward),
}


# ---- activations with parameters ------------------------------------------------------------

def prelu_forward(
    x: np.ndarray, alpha: np.ndarray
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """x (N, H) where x > 0, else alpha * x, with a learned slope alpha (H,) per unit."""
    return np.where(x > 0, x, alpha * x), (x, alpha)


def prelu_backward(
    dout: np.ndarray, cache: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """dout (N, H) -> dx (N, H), dalpha (H,): the slope collects dout * x where x <= 0."""
    x, alpha = cache
    negative = x <= 0
    dx = np.where(negative, alpha * dout, dout)
    dalpha = (dout * x * negative).sum(axis=0)
    return dx, dalpha


def maxout_forward(
    x: np.ndarray, pieces: int = MAXOUT_PIECES
) -> tuple[np.ndarray, tuple[tuple[int, ...], np.ndarray]]:
    """x (N, k H) -> out (N, H): unit j is the max of its k pieces, columns j, H + j, ...

    The affine layer before it has k H outputs, so maxout has k times the weights of a
    layer with another activation: twice as many for k = 2.
    """
    N, width = x.shape
    if width % pieces:
        raise ValueError(f"maxout: {width} inputs are not {pieces} pieces per unit")
    stacked = x.reshape(N, pieces, width // pieces)  # (N, k, H), piece p in block p
    winner = stacked.argmax(axis=1)  # (N, H): one piece per unit, even on ties
    return stacked.max(axis=1), (stacked.shape, winner)


def maxout_backward(
    dout: np.ndarray, cache: tuple[tuple[int, ...], np.ndarray]
) -> np.ndarray:
    """dout (N, H) -> dx (N, k H): all of it goes to the winning piece of each unit."""
    shape, winner = cache
    dx = np.zeros(shape, dtype=dout.dtype)
    np.put_along_axis(dx, winner[:, None, :], dout[:, None, :], axis=1)
    return dx.reshape(shape[0], -1)


# ---- batch normalization and dropout ---------------------------------------------------------

def batchnorm_forward(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    mode: Mode,
    momentum: float = 0.9,
    eps: float = 1e-5,
) -> tuple[np.ndarray, tuple]:
    """Normalise every unit (column) of x (N, H), then scale by gamma (H,), shift by beta (H,).

    train: with the mean and variance of this batch, and running_mean / running_var (H,)
    are moved in place towards them: r = momentum r + (1 - momentum) batch value.
    test: with the running averages, which are left untouched.
    """
    eps = float(eps)
    if mode == "train":
        mean = x.mean(axis=0)
        centred = x - mean
        var = np.mean(centred * centred, axis=0)  # biased: the variance the batch is scaled by
        _update_running(running_mean, mean, momentum)
        _update_running(running_var, var, momentum)
    else:
        centred = x - running_mean
        var = running_var
    inv_std = 1 / np.sqrt(var + eps)  # (H,)
    xhat = centred * inv_std
    out = xhat * gamma
    out += beta
    return out, (xhat, gamma, inv_std, mode)


def _update_running(running: np.ndarray, batch_value: np.ndarray, momentum: float) -> None:
    running *= momentum
    running += (1 - momentum) * batch_value


def batchnorm_backward(
    dout: np.ndarray, cache: tuple
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dout (N, H) -> dx (N, H), dgamma (H,), dbeta (H,).

    In training the mean and variance depend on x as well; summing their paths gives the
    short form dx = gamma inv_std (dout - (dbeta + xhat dgamma) / N). In test mode they are
    constants and dx = gamma inv_std dout.
    """
    xhat, gamma, inv_std, mode = cache
    dbeta = dout.sum(axis=0)
    dgamma = (dout * xhat).sum(axis=0)
    scale = gamma * inv_std  # (H,)
    if mode == "train":
        N = dout.shape[0]
        dx = dout - (xhat * (dgamma / N) + dbeta / N)
        dx *= scale
    else:
        dx = dout * scale
    return dx, dgamma, dbeta


def dropout_forward(
    x: np.ndarray, p: float, mode: Mode, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Inverted dropout: in training each unit is zeroed with probability p and the others
    are scaled by 1 / (1 - p), so test mode is the identity and needs no rescaling.

    The mask comes from `rng`, an explicit generator, so one seed fixes every mask.
    """
    if mode != "train" or p == 0:
        return x, None
    if rng is None:
        raise ValueError("dropout in train mode needs a np.random.Generator")
    keep = rng.random(x.shape, dtype=np.float32) >= p
    mask = keep.astype(x.dtype) / x.dtype.type(1 - p)
    return x * mask, mask


def dropout_backward(dout: np.ndarray, cache: np.ndarray | None) -> np.ndarray:
    """dx = dout * mask (the identity where the forward was)."""
    mask = cache
    return dout if mask is None else dout * mask
