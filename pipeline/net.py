"""Fully connected net of any depth: affine -> activation, repeated, then affine -> softmax.

Parameters live in a flat dict: W1, b1 for the first layer, ..., WL, bL for the scores layer,
with L = len(hidden_dims) + 1. Everything is batched matrix products; the dtype of the params
(float32 in training, float64 in gradient checks) is the dtype of every computation.
"""

from dataclasses import dataclass
from enum import Enum

import numpy as np
from numpy.typing import DTypeLike

from pipeline.layers import (
    ACTIVATIONS,
    affine_backward,
    affine_forward,
    affine_param_grads,
    softmax_loss,
)

INITS = ("gaussian", "xavier", "he")


def _plain(value):
    """Config enums (str subclasses) to their plain value, so lookups and messages are clean."""
    return value.value if isinstance(value, Enum) else value


def _check_choice(what: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; allowed: {', '.join(sorted(allowed))}")


@dataclass(frozen=True)
class NetSpec:
    """Architecture and initialisation of the net; validated on construction."""

    input_dim: int = 3072
    hidden_dims: tuple[int, ...] = (50,)
    num_classes: int = 10
    activation: str = "relu"
    init: str = "gaussian"  # "gaussian": std weight_scale; "xavier": var 1/fan_in; "he": 2/fan_in
    weight_scale: float = 1e-4

    def __post_init__(self) -> None:
        # Hydra hands over lists and enums; a frozen spec wants hashable plain values.
        object.__setattr__(self, "hidden_dims", tuple(int(h) for h in self.hidden_dims))
        object.__setattr__(self, "activation", _plain(self.activation))
        object.__setattr__(self, "init", _plain(self.init))
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check_choice("init", self.init, INITS)

    @property
    def dims(self) -> tuple[int, ...]:
        """Layer widths from input to scores: (input_dim, *hidden_dims, num_classes)."""
        return (self.input_dim, *self.hidden_dims, self.num_classes)

    @property
    def num_layers(self) -> int:
        """Number of affine layers, i.e. of weight matrices."""
        return len(self.hidden_dims) + 1


def _init_std(spec: NetSpec, fan_in: int) -> float:
    if spec.init == "gaussian":
        return spec.weight_scale
    if spec.init == "xavier":
        return float(np.sqrt(1.0 / fan_in))
    return float(np.sqrt(2.0 / fan_in))


def init_params(
    spec: NetSpec, rng: np.random.Generator, dtype: DTypeLike = np.float32
) -> dict[str, np.ndarray]:
    """W_l (fan_in, fan_out) ~ N(0, std^2) with std set by spec.init; b_l (fan_out,) = 0.

    Draws in float64 and casts, so one seed gives the same net in float32 and float64.
    """
    params = {}
    for layer, (fan_in, fan_out) in enumerate(zip(spec.dims[:-1], spec.dims[1:]), start=1):
        std = _init_std(spec, fan_in)
        params[f"W{layer}"] = (std * rng.standard_normal((fan_in, fan_out))).astype(dtype)
        params[f"b{layer}"] = np.zeros(fan_out, dtype=dtype)
    return params


def weight_names(params: dict[str, np.ndarray]) -> list[str]:
    """["W1", "W2", ...] in layer order (numeric, so W10 comes after W9)."""
    names = [name for name in params if name.startswith("W") and name[1:].isdigit()]
    return sorted(names, key=lambda name: int(name[1:]))


def _hidden_forward(params: dict[str, np.ndarray], X: np.ndarray, spec: NetSpec):
    """Hidden stack -> (out (N, H_last), caches per layer, pre-activations per layer)."""
    activation_forward, _ = ACTIVATIONS[spec.activation]
    out = np.asarray(X, dtype=params["W1"].dtype)
    caches, pre_activations = [], []
    for layer in range(1, spec.num_layers):
        pre, affine_cache = affine_forward(out, params[f"W{layer}"], params[f"b{layer}"])
        out, activation_cache = activation_forward(pre)  # (N, H_layer)
        caches.append((affine_cache, activation_cache))
        pre_activations.append(pre)
    return out, caches, pre_activations


def forward(
    params: dict[str, np.ndarray], X: np.ndarray, spec: NetSpec
) -> tuple[np.ndarray, list]:
    """X (N, D) -> scores (N, C), caches (one (affine, activation) pair per layer).

    X is cast to the params dtype, so float64 data cannot silently upcast a float32 net.
    """
    hidden, caches, _ = _hidden_forward(params, X, spec)
    last = spec.num_layers
    scores, affine_cache = affine_forward(hidden, params[f"W{last}"], params[f"b{last}"])
    caches.append((affine_cache, None))
    return scores, caches


def hidden_preactivations(
    params: dict[str, np.ndarray], X: np.ndarray, spec: NetSpec
) -> list[np.ndarray]:
    """Inputs of every hidden activation, [(N, H_1), ..., (N, H_last)]; used to find kinks."""
    _, _, pre_activations = _hidden_forward(params, X, spec)
    return pre_activations


def _backward(dscores: np.ndarray, caches: list, spec: NetSpec) -> dict[str, np.ndarray]:
    """dscores (N, C) -> grads of the data loss for every W_l, b_l."""
    _, activation_backward = ACTIVATIONS[spec.activation]
    grads = {}
    dout = dscores
    for layer in range(spec.num_layers, 1, -1):
        affine_cache, _ = caches[layer - 1]
        dhidden, grads[f"W{layer}"], grads[f"b{layer}"] = affine_backward(dout, affine_cache)
        _, activation_cache = caches[layer - 2]
        dout = activation_backward(dhidden, activation_cache)  # (N, H_{layer-1})

    affine_cache, _ = caches[0]
    grads["W1"], grads["b1"] = affine_param_grads(dout, affine_cache)
    return grads


def reg_loss(params: dict[str, np.ndarray], reg: float) -> float:
    """0.5 * reg * sum of squared weights, biases excluded."""
    squares = sum(float(np.vdot(params[w], params[w])) for w in weight_names(params))
    return 0.5 * float(reg) * squares


def loss_and_grads(
    params: dict[str, np.ndarray], X: np.ndarray, y: np.ndarray, reg: float, spec: NetSpec
) -> tuple[float, dict[str, np.ndarray]]:
    """Data loss + L2 penalty on weights, and its gradient for every param (same keys, dtype)."""
    reg = float(reg)  # a numpy float64 reg would make reg * W a float64 temporary
    scores, caches = forward(params, X, spec)
    loss, dscores = softmax_loss(scores, y)
    grads = _backward(dscores, caches, spec)

    for w in weight_names(params):
        grads[w] += reg * params[w]
    return loss + reg_loss(params, reg), grads


def _chunks(N: int, batch_size: int):
    for start in range(0, N, batch_size):
        yield slice(start, min(start + batch_size, N))


def data_loss(
    params: dict[str, np.ndarray],
    X: np.ndarray,
    y: np.ndarray,
    spec: NetSpec,
    batch_size: int = 10000,
) -> float:
    """Mean cross-entropy without the penalty (for logging), in chunks of batch_size."""
    total = 0.0
    for rows in _chunks(X.shape[0], batch_size):
        scores, _ = forward(params, X[rows], spec)
        loss, _ = softmax_loss(scores, y[rows])
        total += loss * (rows.stop - rows.start)
    return total / X.shape[0]


def predict(
    params: dict[str, np.ndarray], X: np.ndarray, spec: NetSpec, batch_size: int = 10000
) -> np.ndarray:
    """Predicted class per row of X (N, D) -> (N,) int, in chunks of batch_size."""
    labels = np.empty(X.shape[0], dtype=np.intp)
    for rows in _chunks(X.shape[0], batch_size):
        scores, _ = forward(params, X[rows], spec)
        labels[rows] = scores.argmax(axis=1)
    return labels


def accuracy(
    params: dict[str, np.ndarray],
    X: np.ndarray,
    y: np.ndarray,
    spec: NetSpec,
    batch_size: int = 10000,
) -> float:
    """Fraction of rows of X whose predicted class equals y."""
    return float(np.mean(predict(params, X, spec, batch_size) == y))
