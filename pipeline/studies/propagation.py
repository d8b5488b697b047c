"""One forward and one backward pass through a deep net, layer by layer, kept for inspection.

The net's own forward keeps only what its backward needs; the init study wants every layer's
input, pre-activation, activation and gradient, so the pass is composed here from the
library's affine layer and bound activations (`pipeline.net.nonlinearity`). Each hidden
layer l computes z_l = x_{l-1} W_l + b_l and h_l = f(z_l); a scores layer and the softmax loss
on top give the backward pass a real loss to start from.
"""

from dataclasses import dataclass, field, replace

import numpy as np

from pipeline.activations import ACTIVATION_NAMES, Nonlinearity
from pipeline.layers import affine_backward, affine_forward, softmax_loss
from pipeline.net import NetSpec, nonlinearity, weight_names

# The identity is no activation of the library; the study adds it as the reference case in
# which Xavier's variance argument holds exactly.
LINEAR = "linear"
IDENTITY = Nonlinearity(forward=lambda x, _: (x, None), backward=lambda dout, _: (dout, None))


def study_activations() -> list[str]:
    """Every activation of the library, then the linear reference."""
    return [*ACTIVATION_NAMES, LINEAR]


def study_spec(spec: NetSpec, activation: str) -> NetSpec:
    """spec with `activation`; for the linear reference, the shapes of an elementwise one."""
    return replace(spec, activation="relu" if activation == LINEAR else activation)


def activation_of(spec: NetSpec, activation: str) -> Nonlinearity:
    return IDENTITY if activation == LINEAR else nonlinearity(spec)


@dataclass
class Trace:
    """Per hidden layer l = 1..depth (list index l - 1)."""

    inputs: list[np.ndarray] = field(default_factory=list)  # x_{l-1}, (N, fan_in)
    pre: list[np.ndarray] = field(default_factory=list)  # z_l, (N, fan_out)
    out: list[np.ndarray] = field(default_factory=list)  # h_l = f(z_l), (N, units)
    slope: list[np.ndarray] = field(default_factory=list)  # dh/dz summed over h, (N, fan_out)
    grad: list[np.ndarray] = field(default_factory=list)  # dL/dh_l, (N, units)
    dW: list[np.ndarray] = field(default_factory=list)  # dL/dW_l, (fan_in, fan_out)
    loss: float = float("nan")


def trace(params: dict[str, np.ndarray], X: np.ndarray, y: np.ndarray,
          act: Nonlinearity) -> Trace:
    """Forward X (N, D) through every hidden layer and the scores, then back from the loss."""
    depth = len(weight_names(params)) - 1
    t = Trace()
    caches = []

    # forward, keeping every layer's input, pre-activation and activation
    x = X
    for layer in range(1, depth + 1):
        z, affine_cache = affine_forward(x, params[f"W{layer}"], params[f"b{layer}"])
        h, act_cache = act.forward(z, params.get(f"alpha{layer}"))
        # f'(z) through the library's own backward: the gradient of sum(f(z)) w.r.t. z
        t.slope.append(act.backward(np.ones_like(h), act_cache)[0])
        t.inputs.append(x)
        t.pre.append(z)
        t.out.append(h)
        caches.append((affine_cache, act_cache))
        x = h
    scores, scores_cache = affine_forward(x, params[f"W{depth + 1}"], params[f"b{depth + 1}"])
    t.loss, dscores = softmax_loss(scores, y)

    # backward from the loss, keeping the gradient that reaches each layer's output
    dh, _, _ = affine_backward(dscores, scores_cache)
    grads, dWs = [], []
    for affine_cache, act_cache in reversed(caches):
        grads.append(dh)
        dz, _ = act.backward(dh, act_cache)
        dh, dW, _ = affine_backward(dz, affine_cache)
        dWs.append(dW)
    t.grad, t.dW = grads[::-1], dWs[::-1]
    return t


def distinct_units(W: np.ndarray, b: np.ndarray, units: int, rtol: float = 1e-6) -> int:
    """Units of a layer whose incoming weights W (D, k units) and biases b differ, up to rtol.

    A unit owns k columns, j, units + j, ... (k = 1 but for maxout). Units with the same
    weights compute the same output, receive the same gradient and get the same update: they
    stay one unit. Bitwise equality would be too strict, as a BLAS may sum the columns of one
    matmul in different orders and move the last bits.
    """
    pieces = W.shape[1] // units
    rows = np.vstack([W, b[None, :]])  # (D + 1, k units)
    per_unit = rows.reshape(len(rows), pieces, units).transpose(2, 0, 1).reshape(units, -1)
    scale = float(np.abs(per_unit).max())
    if scale == 0.0:
        return 1
    signature = np.round(per_unit / (scale * rtol))  # units closer than rtol share one
    return int(np.unique(signature, axis=0).shape[0])
