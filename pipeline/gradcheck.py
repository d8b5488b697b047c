"""Numeric gradient checks of the net's analytic gradients, in float64.

Error model. The centred difference (L(x+h) - L(x-h)) / 2h of the loss L carries truncation
error, about h^2 |L'''| / 6, and rounding error: each float64 evaluation of L is off by about
an ulp, so the quotient is off by about `rounding` = eps |L| / h (eps = 2.2e-16; 5e-11 for
L = ln 10 and h = 1e-5). Measured |analytic - numeric| stayed below 1.25 rounding in every
smooth coordinate we tried. The relative error of a coordinate with gradient g is therefore
of order rounding / |g| whatever the backward pass does, and a relative 1e-7 is beyond
reach wherever |g| < rounding / 1e-7 (5e-4 above). In the 3072-50-10 net with weight_scale
1e-4 on 5 images that is all of b1 (|g| ~ 1e-7..1e-4) and the small entries of W1 (and of
W2 where data and penalty gradients cancel), so their raw relative errors reach 1e-6..1e-4,
shrinking as 1/h when h grows, while b2 and most of W2 stay near 1e-9. Hence
`GradCheck.passed(tol)` accepts a coordinate when |a - n| <= tol max(|a|, |n|) + 2 rounding:
the relative bound for the math plus the rounding noise with a factor 2 of headroom. The raw
`max_rel_error` is reported next to it, unchanged. Truncation is not allowed for: with h well
above 1e-4, `passed` fails on W2 and b2 (error ~ h^2), as it should.

Kinks. A ReLU net's loss is only piecewise smooth: if a perturbation moves any hidden
pre-activation across 0, the difference quotient mixes two linear pieces and disagrees with
the (one-sided) analytic gradient by up to 100 %, which says nothing about the backward pass.
Such coordinates are detected exactly (by comparing activation patterns at x-h, x and x+h),
counted in `kinks` and left out of every error.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from pipeline.layers import KINKED_AT_ZERO
from pipeline.net import NetSpec, data_loss, hidden_preactivations, loss_and_grads, reg_loss


@dataclass(frozen=True)
class GradCheck:
    """Outcome of `check_net_grads`; errors are over the smooth sampled coordinates only."""

    max_rel_error: dict[str, float]  # raw max relative error per param (nan if none checked)
    kinks: int  # sampled coordinates left out because their +-h step crosses a kink
    checked: int  # sampled coordinates compared
    rounding: float  # eps |L| / h: rounding noise of one centred difference of L
    analytic: dict[str, np.ndarray]  # compared coordinates, per param
    numeric: dict[str, np.ndarray]

    def excess_error(self) -> dict[str, float]:
        """Per param, the max relative error left after taking off twice the rounding noise.

        max(|a - n| - 2 rounding, 0) / max(|a|, |n|): at most tol exactly when every
        coordinate satisfies |a - n| <= tol max(|a|, |n|) + 2 rounding.
        """
        excess = {}
        for name, analytic in self.analytic.items():
            numeric = self.numeric[name]
            beyond_noise = np.maximum(np.abs(analytic - numeric) - 2 * self.rounding, 0.0)
            scale = np.maximum(np.abs(analytic), np.abs(numeric))
            relative = np.divide(beyond_noise, scale, out=np.zeros_like(beyond_noise),
                                 where=scale > 0)
            excess[name] = _max_or_nan(relative)
        return excess

    def passed(self, tol: float) -> bool:
        """Every coordinate within tol relative error plus the rounding noise (see module)."""
        return all(error <= tol for error in self.excess_error().values() if error == error)


def numeric_grad(
    f: Callable[[np.ndarray], float], x: np.ndarray, indices: Iterable[int], h: float = 1e-5
) -> np.ndarray:
    """Centred differences of f at the given flat indices of x -> (len(indices),) float64.

    x is modified in place while f(x) is evaluated and restored afterwards. The quotient
    divides by the step actually stored, (x+h) - (x-h) after rounding, not by 2h.
    """
    grad = []
    for index in indices:
        old = x.flat[index]
        try:
            x.flat[index] = old + h
            upper, f_plus = x.flat[index], f(x)
            x.flat[index] = old - h
            lower, f_minus = x.flat[index], f(x)
        finally:
            x.flat[index] = old
        grad.append((f_plus - f_minus) / (float(upper) - float(lower)))
    return np.array(grad, dtype=np.float64)


def rel_error(analytic: np.ndarray, numeric: np.ndarray) -> np.ndarray:
    """Elementwise |a - n| / max(|a|, |n|), and 0 where both are exactly 0."""
    analytic = np.asarray(analytic, dtype=np.float64)
    numeric = np.asarray(numeric, dtype=np.float64)
    diff = np.abs(analytic - numeric)
    scale = np.maximum(np.abs(analytic), np.abs(numeric))
    return np.divide(diff, scale, out=np.zeros_like(diff), where=scale > 0)


def _activation_pattern(params, X, spec) -> list[np.ndarray]:
    return [pre > 0 for pre in hidden_preactivations(params, X, spec)]


def _crosses_kink(params, x, index, h, X, spec, base) -> bool:
    """Does moving x.flat[index] by +h or -h switch any hidden unit on or off?"""
    old = x.flat[index]
    try:
        for value in (old + h, old - h):
            x.flat[index] = value
            pattern = _activation_pattern(params, X, spec)
            if any(not np.array_equal(p, q) for p, q in zip(pattern, base)):
                return True
    finally:
        x.flat[index] = old
    return False


def check_net_grads(
    params: dict[str, np.ndarray],
    X: np.ndarray,
    y: np.ndarray,
    reg: float,
    spec: NetSpec,
    rng: np.random.Generator,
    num_checks: int = 20,
    h: float = 1e-5,
) -> GradCheck:
    """Compare loss_and_grads with centred differences on float64 copies of params and X.

    Samples min(num_checks, size) distinct coordinates of every param. Coordinates whose
    +-h step crosses a kink of the activation are excluded (see module docstring).
    """
    params = {name: p.astype(np.float64) for name, p in params.items()}
    X = np.asarray(X, dtype=np.float64)
    loss_value, grads = loss_and_grads(params, X, y, reg, spec)

    def loss(_) -> float:
        return data_loss(params, X, y, spec) + reg_loss(params, reg)

    base = _activation_pattern(params, X, spec)
    kinked = spec.activation in KINKED_AT_ZERO
    analytic, numeric, kinks = {}, {}, 0
    for name, p in params.items():
        indices = rng.choice(p.size, size=min(num_checks, p.size), replace=False)
        smooth = [i for i in indices
                  if not (kinked and _crosses_kink(params, p, i, h, X, spec, base))]
        kinks += len(indices) - len(smooth)
        analytic[name] = grads[name].flat[smooth]
        numeric[name] = numeric_grad(loss, p, smooth, h)

    max_rel_error = {name: _max_or_nan(rel_error(analytic[name], numeric[name]))
                     for name in params}
    checked = sum(len(a) for a in analytic.values())
    rounding = float(np.finfo(np.float64).eps * abs(loss_value) / h)
    return GradCheck(max_rel_error, kinks, checked, rounding, analytic, numeric)


def _max_or_nan(errors: np.ndarray) -> float:
    return float(errors.max()) if errors.size else float("nan")
