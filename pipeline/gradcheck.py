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

Kinks. A net with ReLU, leaky ReLU, PReLU, ELU or maxout units is only piecewise smooth: if
a perturbation moves any unit onto another piece (a pre-activation across 0, another maxout
piece winning), the difference quotient mixes two pieces and disagrees with the (one-sided)
analytic gradient by up to 100 %, which says nothing about the backward pass. Such
coordinates are detected exactly (by comparing the pieces, `pipeline.net.activation_pieces`,
at x-h, x and x+h), counted in `kinks` and left out of every error; the bound is the same
for every coordinate that remains. With batch normalization in training any parameter moves
every unit through the batch statistics, and the detection covers that too.

Dropout draws its mask from a generator made anew from `dropout_seed` for every evaluation,
so every evaluation of the loss sees the same mask and the loss is a fixed function.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from pipeline.net import NetSpec, activation_pieces, data_loss, loss_and_grads, reg_loss

Pieces = Callable[[], list[np.ndarray]]


@dataclass(frozen=True)
class GradCheck:
    """Outcome of `check_grads` / `check_net_grads`; errors are over the smooth sampled
    coordinates only."""

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


def _crosses_kink(pieces: Pieces, x: np.ndarray, index: int, h: float,
                  base: list[np.ndarray]) -> bool:
    """Does moving x.flat[index] by +h or -h put any unit on another piece?"""
    old = x.flat[index]
    try:
        for value in (old + h, old - h):
            x.flat[index] = value
            if any(not np.array_equal(p, q) for p, q in zip(pieces(), base)):
                return True
    finally:
        x.flat[index] = old
    return False


def check_grads(
    f: Callable[[], float],
    arrays: dict[str, np.ndarray],
    analytic: dict[str, np.ndarray],
    rng: np.random.Generator,
    num_checks: int = 20,
    h: float = 1e-5,
    pieces: Pieces | None = None,
) -> GradCheck:
    """Compare analytic[name], the gradient of the scalar f() with respect to arrays[name],
    with centred differences; f reads the arrays, which are perturbed in place.

    Samples min(num_checks, size) distinct coordinates of every array; with `pieces` (the
    linear piece of every unit, as a list of arrays) coordinates whose +-h step changes a
    piece are excluded (see module docstring).
    """
    loss_value = f()
    base = pieces() if pieces else []
    compared, numeric, kinks = {}, {}, 0
    for name, x in arrays.items():
        indices = rng.choice(x.size, size=min(num_checks, x.size), replace=False)
        smooth = [i for i in indices
                  if not (pieces and _crosses_kink(pieces, x, i, h, base))]
        kinks += len(indices) - len(smooth)
        compared[name] = analytic[name].flat[smooth]
        numeric[name] = numeric_grad(lambda _: f(), x, smooth, h)

    max_rel_error = {name: _max_or_nan(rel_error(compared[name], numeric[name]))
                     for name in arrays}
    checked = sum(len(a) for a in compared.values())
    rounding = float(np.finfo(np.float64).eps * abs(loss_value) / h)
    return GradCheck(max_rel_error, kinks, checked, rounding, compared, numeric)


def check_net_grads(
    params: dict[str, np.ndarray],
    X: np.ndarray,
    y: np.ndarray,
    reg: float,
    spec: NetSpec,
    rng: np.random.Generator,
    num_checks: int = 20,
    h: float = 1e-5,
    *,
    mode: str = "train",
    state: dict[str, np.ndarray] | None = None,
    dropout_seed: int = 0,
    train_from: int = 1,
) -> GradCheck:
    """Compare loss_and_grads (data loss + L2 penalty) with centred differences, on float64
    copies of params, X and state, in `mode` (test mode needs the BN `state`).

    Checks every param that has a gradient (those of layers >= train_from). Coordinates
    whose +-h step crosses a kink of the activation are excluded (see module docstring).
    """
    params = {name: p.astype(np.float64) for name, p in params.items()}
    X = np.asarray(X, dtype=np.float64)
    # layers in train mode move their running averages but do not read them: the copy keeps
    # the caller's state as it was, and the loss a fixed function
    state = None if state is None else {name: s.astype(np.float64) for name, s in state.items()}

    def run(fn, *args):
        dropout = np.random.default_rng(dropout_seed) if spec.dropout else None
        return fn(params, X, *args, mode=mode, state=state, rng=dropout, train_from=train_from)

    _, grads = run(loss_and_grads, y, reg, spec)
    trained = {name: p for name, p in params.items() if name in grads}
    return check_grads(lambda: run(data_loss, y, spec) + reg_loss(params, reg), trained, grads,
                       rng, num_checks, h, lambda: run(activation_pieces, spec))


def _max_or_nan(errors: np.ndarray) -> float:
    return float(errors.max()) if errors.size else float("nan")
