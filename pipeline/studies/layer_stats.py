"""What the init study measures in each layer, and what the variance argument predicts.

Theory. For z = sum_i w_i x_i over fan_in inputs, with the weights independent of the inputs,
the product rule gives Var(w x) = Var(w) Var(x) + Var(w) E[x]^2 + E[w]^2 Var(x), and the
fan_in terms add up: this prediction holds at initialisation whatever the activation, since it
uses the measured moments of the layer's input. Xavier's argument adds two assumptions: the
input has zero mean, and the activation passes the variance through, f(z) ~ z. Then
Var(z_l) = fan_in Var(w) Var(z_{l-1}), which a variance 1 / fan_in keeps constant. That
holds for the identity and for tanh near 0; a ReLU zeroes half of a symmetric input, so
E[relu(z)^2] = Var(z) / 2 and the measured variance is half the prediction at every layer,
which is the factor 2 in He's variance 2 / fan_in.

Flat spots. `inactive` is the fraction of pre-activations through which no gradient passes
(f'(z) = 0), `dead` the fraction of them that pass none on any example of the batch: a ReLU
unit that never fires. For maxout both count affine pieces: the losing piece of every unit is
inactive, a piece that never wins is dead.
"""

import numpy as np

from pipeline.studies.propagation import Trace

# Activations whose output is bounded, with their bounds: a unit is saturated when its output
# sits within (1 - saturation) of the half-range from a bound, i.e. |tanh| > 0.99 for 0.99.
BOUNDS = {"tanh": (-1.0, 1.0), "sigmoid": (0.0, 1.0)}

COLUMNS = ["layer", "fan_in", "act_mean", "act_std", "grad_std", "dW_std", "saturated",
           "inactive", "dead", "w_var", "in_mean", "in_var", "var_measured", "var_product",
           "var_xavier"]


def saturated_fraction(h: np.ndarray, activation: str, saturation: float) -> float:
    """Fraction of outputs near a bound of a bounded activation; nan for unbounded ones."""
    if activation not in BOUNDS:
        return float("nan")
    low, high = BOUNDS[activation]
    centred = (2 * h - (low + high)) / (high - low)  # the range mapped onto [-1, 1]
    return float(np.mean(np.abs(centred) > saturation))


def product_rule(x: np.ndarray, W: np.ndarray) -> float:
    """Var(z) for z = x W: fan_in times the variance of one product w x, moments measured."""
    x_mean, x_var = float(x.mean()), float(x.var())
    w_mean, w_var = float(W.mean()), float(W.var())
    return W.shape[0] * (w_var * x_var + w_var * x_mean ** 2 + w_mean ** 2 * x_var)


def xavier_chain(W: np.ndarray, previous_var: float) -> float:
    """Xavier's Var(z_l) = fan_in Var(w) Var(z_{l-1}): zero-mean input, f(z) ~ z."""
    return W.shape[0] * float(W.var()) * previous_var


def layer_rows(t: Trace, params: dict[str, np.ndarray], activation: str,
               saturation: float) -> list[dict]:
    """One row per hidden layer with the COLUMNS above."""
    rows = []
    previous_var = float(t.inputs[0].var())
    for index, (x, z, h) in enumerate(zip(t.inputs, t.pre, t.out)):
        W = params[f"W{index + 1}"]
        flat = t.slope[index] == 0  # (N, H) where no gradient passes
        rows.append({
            "layer": index + 1,
            "fan_in": W.shape[0],
            "act_mean": float(h.mean()),
            "act_std": float(h.std()),
            "grad_std": float(t.grad[index].std()),
            "dW_std": float(t.dW[index].std()),
            "saturated": saturated_fraction(h, activation, saturation),
            "inactive": float(flat.mean()),
            "dead": float(flat.all(axis=0).mean()),  # units silent on every example
            "w_var": float(W.var()),
            "in_mean": float(x.mean()),
            "in_var": float(x.var()),
            "var_measured": float(z.var()),
            "var_product": product_rule(x, W),
            "var_xavier": xavier_chain(W, previous_var),
        })
        previous_var = float(z.var())
    return rows


def histograms(t: Trace, bins: int) -> list[dict]:
    """Counts of every layer's activations over one range shared by all layers of the net.

    A shared range is what makes the lecture's picture: activations that collapse towards 0
    become an ever narrower spike, saturated ones pile up at the two ends.
    """
    low = min(float(h.min()) for h in t.out)
    high = max(float(h.max()) for h in t.out)
    if not high > low:
        low, high = low - 1.0, high + 1.0
    rows = []
    for index, h in enumerate(t.out):
        counts, edges = np.histogram(h, bins=bins, range=(low, high))
        rows += [{"layer": index + 1, "bin": b, "low": float(edges[b]),
                  "high": float(edges[b + 1]), "count": int(counts[b])} for b in range(bins)]
    return rows
