"""Parameter update rules. Each returns the update instead of applying it, so the caller can
log update/weight ratios; `step` applies them in place.

A rule is `rule(w, dw, state, lr, **hyper) -> (update, new_state)` with `state` a dict owned
by one parameter ({} before the first step). Hyperparameters are turned into Python floats
first: a numpy float64 lr would otherwise upcast float32 updates. Buffers are updated in
place, so a step allocates little beyond the gradients themselves.
"""

from collections.abc import Callable

import numpy as np

State = dict[str, np.ndarray | int]
UpdateRule = Callable[..., tuple[np.ndarray, State]]


def sgd(w: np.ndarray, dw: np.ndarray, state: State, lr: float) -> tuple[np.ndarray, State]:
    """update = -lr * dw; no state."""
    return -float(lr) * dw, state


def sgd_momentum(
    w: np.ndarray, dw: np.ndarray, state: State, lr: float, momentum: float = 0.9
) -> tuple[np.ndarray, State]:
    """v = momentum * v - lr * dw (v starts at 0, shaped and typed like w); update = v.

    The returned update is the stored velocity itself: read it before the next step, which
    changes it in place.
    """
    velocity = state.get("velocity")
    if velocity is None:
        velocity = np.zeros_like(w)
    velocity *= float(momentum)
    velocity -= float(lr) * dw
    return velocity, {"velocity": velocity}


def nesterov(
    w: np.ndarray, dw: np.ndarray, state: State, lr: float, momentum: float = 0.9
) -> tuple[np.ndarray, State]:
    """Nesterov momentum in the form that keeps the lookahead point as the parameter:
    v' = momentum * v - lr * dw; update = -momentum * v + (1 + momentum) * v'.
    """
    momentum = float(momentum)
    velocity = state.get("velocity")
    if velocity is None:
        velocity = np.zeros_like(w)
    update = -momentum * velocity
    velocity *= momentum
    velocity -= float(lr) * dw
    update += (1 + momentum) * velocity
    return update, {"velocity": velocity}


def adam(
    w: np.ndarray,
    dw: np.ndarray,
    state: State,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
) -> tuple[np.ndarray, State]:
    """m, v: running means of dw and dw^2, bias-corrected for their start at 0;
    update = -lr * m_hat / (sqrt(v_hat) + eps). The step count t is kept per parameter.
    """
    beta1, beta2 = float(beta1), float(beta2)
    m, v = state.get("m"), state.get("v")
    if m is None:
        m, v = np.zeros_like(w), np.zeros_like(w)
    t = int(state.get("t", 0)) + 1
    m *= beta1
    m += (1 - beta1) * dw
    v *= beta2
    v += (1 - beta2) * (dw * dw)
    # lr * m_hat / (sqrt(v_hat) + eps), with the corrections folded into two scalars
    step_size = float(lr) * np.sqrt(1 - beta2**t) / (1 - beta1**t)
    denominator = np.sqrt(v)
    denominator += float(eps) * np.sqrt(1 - beta2**t)
    update = m / denominator
    update *= -step_size
    return update, {"m": m, "v": v, "t": t}


UPDATE_RULES: dict[str, UpdateRule] = {
    "sgd": sgd,
    "sgd_momentum": sgd_momentum,
    "nesterov": nesterov,
    "adam": adam,
}

# The hyperparameters each rule takes besides lr, by name.
HYPERPARAMETERS: dict[str, tuple[str, ...]] = {
    "sgd": (),
    "sgd_momentum": ("momentum",),
    "nesterov": ("momentum",),
    "adam": ("beta1", "beta2", "eps"),
}


def step(
    params: dict[str, np.ndarray],
    grads: dict[str, np.ndarray],
    states: dict[str, State],
    rule: str,
    lr: float,
    **hyper: float,
) -> dict[str, np.ndarray]:
    """Update every param in place with `rule`; fills `states` per param name; returns updates."""
    if rule not in UPDATE_RULES:
        raise ValueError(f"unknown update rule {rule!r}; allowed: {', '.join(UPDATE_RULES)}")
    update_rule = UPDATE_RULES[rule]

    updates = {}
    for name, w in params.items():
        updates[name], states[name] = update_rule(w, grads[name], states.get(name, {}), lr,
                                                  **hyper)
        w += updates[name]
    return updates
