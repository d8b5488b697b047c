"""Fully connected net of any depth: [affine -> batchnorm -> activation -> dropout] per hidden
layer (batchnorm and dropout optional), then affine -> softmax.

Parameters live in a flat dict: W1, b1 for the first layer, ..., WL, bL for the scores layer,
with L = len(hidden_dims) + 1; gamma_l, beta_l with batch normalization; alpha_l, the
learned slopes, with PReLU. The running averages of batch normalization are no parameters:
no gradient, no L2 penalty, no update rule touches them. They live in a separate `state`
dict (running_mean_l, running_var_l) that training moves in place and testing reads.

`mode` is "train" (batch statistics, dropout on, running averages updated when a state is
given) or "test" (running averages, dropout off). Dropout draws its masks from an explicit
generator, so one seed fixes a run. Everything is batched matrix products; the dtype of the
params (float32 in training, float64 in gradient checks) is the dtype of every computation.
"""

from dataclasses import dataclass, fields
from enum import Enum
from functools import lru_cache

import numpy as np
from numpy.typing import DTypeLike

from pipeline.activations import ACTIVATION_NAMES, Nonlinearity, bind
from pipeline.layers import (
    Mode,
    affine_backward,
    affine_forward,
    affine_param_grads,
    batchnorm_backward,
    batchnorm_forward,
    dropout_backward,
    dropout_forward,
    softmax_loss,
)

INITS = ("zeros", "gaussian", "unit_gaussian", "xavier", "glorot", "he")


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
    init: str = "gaussian"  # see init_std
    weight_scale: float = 0.01  # std of the "gaussian" init: small random numbers
    bias_init: float = 0.0  # hidden biases; a small positive value starts ReLU units active
    leaky_slope: float = 0.01  # slope of leaky_relu for x < 0; PReLU's slopes start here
    elu_alpha: float = 1.0  # ELU saturates at -alpha
    maxout_pieces: int = 2  # affine pieces per maxout unit
    batchnorm: bool = False  # normalise every hidden pre-activation
    bn_momentum: float = 0.9  # running average = momentum * itself + (1 - momentum) * batch
    bn_eps: float = 1e-5
    dropout: float = 0.0  # probability of zeroing a hidden unit in training

    def __post_init__(self) -> None:
        # Hydra hands over lists and enums; a frozen spec wants hashable plain values.
        object.__setattr__(self, "hidden_dims", tuple(int(h) for h in self.hidden_dims))
        object.__setattr__(self, "activation", _plain(self.activation))
        object.__setattr__(self, "init", _plain(self.init))
        _check_choice("activation", self.activation, ACTIVATION_NAMES)
        _check_choice("init", self.init, INITS)
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.maxout_pieces < 1:
            raise ValueError(f"maxout_pieces must be >= 1, got {self.maxout_pieces}")

    @property
    def dims(self) -> tuple[int, ...]:
        """Layer widths from input to scores: (input_dim, *hidden_dims, num_classes)."""
        return (self.input_dim, *self.hidden_dims, self.num_classes)

    @property
    def num_layers(self) -> int:
        """Number of affine layers, i.e. of weight matrices."""
        return len(self.hidden_dims) + 1

    def affine_shapes(self) -> list[tuple[int, int]]:
        """(fan_in, fan_out) of W1..WL; a maxout layer has maxout_pieces outputs per unit."""
        pieces = nonlinearity(self).pieces
        return [(fan_in, fan_out * (pieces if layer < self.num_layers else 1))
                for layer, (fan_in, fan_out)
                in enumerate(zip(self.dims[:-1], self.dims[1:]), start=1)]


@lru_cache(maxsize=64)
def nonlinearity(spec: NetSpec) -> Nonlinearity:
    """The activation of spec's hidden layers, bound to its hyperparameters."""
    return bind(spec.activation, leaky_slope=spec.leaky_slope, elu_alpha=spec.elu_alpha,
                maxout_pieces=spec.maxout_pieces)


# Fields that only shape the start or the training of a net: two specs differing in these
# alone describe the same function, so a checkpoint of one can be fine-tuned as the other.
TRAINING_ONLY = frozenset({"init", "weight_scale", "bias_init", "dropout", "bn_momentum"})


def architecture_differences(a: NetSpec, b: NetSpec) -> list[str]:
    """The fields besides TRAINING_ONLY in which a and b differ, as "name: a -> b"."""
    return [f"{f.name}: {getattr(a, f.name)} -> {getattr(b, f.name)}" for f in fields(a)
            if f.name not in TRAINING_ONLY and getattr(a, f.name) != getattr(b, f.name)]


def same_architecture(a: NetSpec, b: NetSpec) -> bool:
    """Do a and b compute the same function of the same parameters?"""
    return not architecture_differences(a, b)


def init_std(spec: NetSpec, fan_in: int, fan_out: int) -> float:
    """Std of the weights of a (fan_in, fan_out) layer.

    zeros 0; gaussian weight_scale; unit_gaussian 1; xavier var 1/fan_in;
    glorot var 2/(fan_in + fan_out); he var 2/fan_in (for ReLU, which zeroes half its input).
    """
    by_name = {
        "zeros": 0.0,
        "gaussian": spec.weight_scale,
        "unit_gaussian": 1.0,
        "xavier": np.sqrt(1.0 / fan_in),
        "glorot": np.sqrt(2.0 / (fan_in + fan_out)),
        "he": np.sqrt(2.0 / fan_in),
    }
    return float(by_name[spec.init])


def init_params(
    spec: NetSpec, rng: np.random.Generator, dtype: DTypeLike = np.float32
) -> dict[str, np.ndarray]:
    """W_l (fan_in, fan_out) ~ N(0, std^2) with std from init_std; hidden b_l = bias_init,
    b_L = 0; gamma_l = 1, beta_l = 0 with batchnorm; alpha_l = leaky_slope with PReLU.

    Draws in float64 and casts, so one seed gives the same net in float32 and float64.
    """
    act = nonlinearity(spec)
    params = {}
    for layer, (fan_in, fan_out) in enumerate(spec.affine_shapes(), start=1):
        std = init_std(spec, fan_in, fan_out)
        if spec.init == "zeros":
            params[f"W{layer}"] = np.zeros((fan_in, fan_out), dtype=dtype)
        else:
            params[f"W{layer}"] = (std * rng.standard_normal((fan_in, fan_out))).astype(dtype)
        hidden = layer < spec.num_layers
        params[f"b{layer}"] = np.full(fan_out, spec.bias_init if hidden else 0.0, dtype=dtype)
        if hidden and spec.batchnorm:
            params[f"gamma{layer}"] = np.ones(fan_out, dtype=dtype)
            params[f"beta{layer}"] = np.zeros(fan_out, dtype=dtype)
        if hidden and act.learned_slope:
            params[f"alpha{layer}"] = np.full(fan_out, spec.leaky_slope, dtype=dtype)
    return params


def init_state(spec: NetSpec, dtype: DTypeLike = np.float32) -> dict[str, np.ndarray]:
    """Running mean 0 and variance 1 per normalised unit; {} without batchnorm."""
    if not spec.batchnorm:
        return {}
    state = {}
    for layer, (_, fan_out) in enumerate(spec.affine_shapes()[:-1], start=1):
        state[f"running_mean{layer}"] = np.zeros(fan_out, dtype=dtype)
        state[f"running_var{layer}"] = np.ones(fan_out, dtype=dtype)
    return state


def weight_names(params: dict[str, np.ndarray]) -> list[str]:
    """["W1", "W2", ...] in layer order (numeric, so W10 comes after W9)."""
    names = [name for name in params if name.startswith("W") and name[1:].isdigit()]
    return sorted(names, key=lambda name: int(name[1:]))


# ---- forward ---------------------------------------------------------------------------------

def _running(state, layer: int, width: int, mode: Mode, dtype):
    """The running averages of one layer; throwaway ones when training without a state."""
    if state is not None:
        return state[f"running_mean{layer}"], state[f"running_var{layer}"]
    if mode == "test":
        raise ValueError("batchnorm in test mode needs the running averages: pass state")
    return np.zeros(width, dtype=dtype), np.ones(width, dtype=dtype)


def _hidden_forward(params, x, layer: int, spec: NetSpec, act: Nonlinearity, mode: Mode,
                    state, rng):
    """One hidden layer: x (N, fan_in) -> h (N, H_layer), cache."""
    pre, affine_cache = affine_forward(x, params[f"W{layer}"], params[f"b{layer}"])
    bn_cache = None
    if spec.batchnorm:
        running = _running(state, layer, pre.shape[1], mode, pre.dtype)
        pre, bn_cache = batchnorm_forward(pre, params[f"gamma{layer}"], params[f"beta{layer}"],
                                          *running, mode, spec.bn_momentum, spec.bn_eps)
    out, act_cache = act.forward(pre, params.get(f"alpha{layer}"))
    out, drop_cache = dropout_forward(out, spec.dropout, mode, rng)
    return out, (affine_cache, bn_cache, act_cache, drop_cache)


def forward(
    params: dict[str, np.ndarray],
    X: np.ndarray,
    spec: NetSpec,
    *,
    mode: Mode = "test",
    state: dict[str, np.ndarray] | None = None,
    rng: np.random.Generator | None = None,
    train_from: int = 1,
) -> tuple[np.ndarray, list]:
    """X (N, D) -> scores (N, C), caches (one (affine, bn, activation, dropout) per layer).

    Layers below `train_from` run in test mode whatever `mode` says: a frozen feature
    extractor. X is cast to the params dtype, so float64 data cannot silently upcast a
    float32 net.
    """
    act = nonlinearity(spec)
    out = np.asarray(X, dtype=params["W1"].dtype)
    caches = []
    for layer in range(1, spec.num_layers):
        layer_mode = mode if layer >= train_from else "test"
        out, cache = _hidden_forward(params, out, layer, spec, act, layer_mode, state, rng)
        caches.append(cache)
    last = spec.num_layers
    scores, affine_cache = affine_forward(out, params[f"W{last}"], params[f"b{last}"])
    caches.append((affine_cache, None, None, None))
    return scores, caches


def activation_pieces(
    params: dict[str, np.ndarray],
    X: np.ndarray,
    spec: NetSpec,
    *,
    mode: Mode = "train",
    state: dict[str, np.ndarray] | None = None,
    rng: np.random.Generator | None = None,
    train_from: int = 1,
) -> list[np.ndarray]:
    """Per hidden layer, the linear piece every activation is on (e.g. x > 0 for ReLU, the
    winning piece for maxout); [] for smooth activations. Used to find kinks."""
    act = nonlinearity(spec)
    if act.piece is None:
        return []
    state = None if state is None else {k: v.copy() for k, v in state.items()}
    _, caches = forward(params, X, spec, mode=mode, state=state, rng=rng,
                        train_from=train_from)
    return [act.piece(act_cache) for _, _, act_cache, _ in caches[:-1]]


# ---- backward --------------------------------------------------------------------------------

def _hidden_backward(dout, cache, layer: int, act: Nonlinearity, grads) -> np.ndarray:
    """dL/dh of one hidden layer -> dL/d(affine output), filling its gamma, beta, alpha."""
    _, bn_cache, act_cache, drop_cache = cache
    dout = dropout_backward(dout, drop_cache)
    dout, dalpha = act.backward(dout, act_cache)
    if dalpha is not None:
        grads[f"alpha{layer}"] = dalpha
    if bn_cache is not None:
        dout, grads[f"gamma{layer}"], grads[f"beta{layer}"] = batchnorm_backward(dout, bn_cache)
    return dout


def _backward(dscores: np.ndarray, caches: list, spec: NetSpec,
              train_from: int = 1) -> dict[str, np.ndarray]:
    """dscores (N, C) -> grads of the data loss for the params of layers >= train_from."""
    act = nonlinearity(spec)
    grads = {}
    dout = dscores
    for layer in range(spec.num_layers, train_from, -1):
        affine_cache = caches[layer - 1][0]
        dhidden, grads[f"W{layer}"], grads[f"b{layer}"] = affine_backward(dout, affine_cache)
        dout = _hidden_backward(dhidden, caches[layer - 2], layer - 1, act, grads)

    # the lowest trained layer needs no dx: nothing below it learns
    affine_cache = caches[train_from - 1][0]
    grads[f"W{train_from}"], grads[f"b{train_from}"] = affine_param_grads(dout, affine_cache)
    return grads


def reg_loss(params: dict[str, np.ndarray], reg: float) -> float:
    """0.5 * reg * sum of squared weights, biases, BN scales and PReLU slopes excluded."""
    squares = sum(float(np.vdot(params[w], params[w])) for w in weight_names(params))
    return 0.5 * float(reg) * squares


def loss_and_grads(
    params: dict[str, np.ndarray],
    X: np.ndarray,
    y: np.ndarray,
    reg: float,
    spec: NetSpec,
    *,
    mode: Mode = "train",
    state: dict[str, np.ndarray] | None = None,
    rng: np.random.Generator | None = None,
    train_from: int = 1,
) -> tuple[float, dict[str, np.ndarray]]:
    """Data loss + L2 penalty on every weight matrix, and the gradient of that sum.

    Grads have the keys, shapes and dtype of the params of layers >= train_from (all params
    by default); the penalty of frozen weights is in the loss, a constant. In train mode the
    running averages in `state` move towards this batch's statistics.
    """
    if not 1 <= train_from <= spec.num_layers:
        raise ValueError(f"train_from must be in 1..{spec.num_layers}, got {train_from}")
    reg = float(reg)  # a numpy float64 reg would make reg * W a float64 temporary
    scores, caches = forward(params, X, spec, mode=mode, state=state, rng=rng,
                             train_from=train_from)
    loss, dscores = softmax_loss(scores, y)
    grads = _backward(dscores, caches, spec, train_from)

    for w in weight_names(grads):
        grads[w] += reg * params[w]
    return loss + reg_loss(params, reg), grads


# ---- evaluation ------------------------------------------------------------------------------

def _chunks(N: int, batch_size: int):
    for start in range(0, N, batch_size):
        yield slice(start, min(start + batch_size, N))


def data_loss(
    params: dict[str, np.ndarray],
    X: np.ndarray,
    y: np.ndarray,
    spec: NetSpec,
    batch_size: int = 10000,
    *,
    mode: Mode = "test",
    state: dict[str, np.ndarray] | None = None,
    rng: np.random.Generator | None = None,
    train_from: int = 1,
) -> float:
    """Mean cross-entropy without the penalty, in chunks of batch_size in test mode.

    In train mode X is one batch, as batch statistics are statistics of the whole batch.
    """
    if mode == "train":
        batch_size = max(X.shape[0], 1)
    total = 0.0
    for rows in _chunks(X.shape[0], batch_size):
        scores, _ = forward(params, X[rows], spec, mode=mode, state=state, rng=rng,
                            train_from=train_from)
        loss, _ = softmax_loss(scores, y[rows])
        total += loss * (rows.stop - rows.start)
    return total / X.shape[0]


def predict(
    params: dict[str, np.ndarray],
    X: np.ndarray,
    spec: NetSpec,
    batch_size: int = 10000,
    *,
    state: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Predicted class per row of X (N, D) -> (N,) int, in test mode, in chunks."""
    labels = np.empty(X.shape[0], dtype=np.intp)
    for rows in _chunks(X.shape[0], batch_size):
        scores, _ = forward(params, X[rows], spec, state=state)
        labels[rows] = scores.argmax(axis=1)
    return labels


def accuracy(
    params: dict[str, np.ndarray],
    X: np.ndarray,
    y: np.ndarray,
    spec: NetSpec,
    batch_size: int = 10000,
    *,
    state: dict[str, np.ndarray] | None = None,
) -> float:
    """Fraction of rows of X whose predicted class (test mode) equals y."""
    return float(np.mean(predict(params, X, spec, batch_size, state=state) == y))
