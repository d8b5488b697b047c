"""Parameter update rules. Each returns the update instead of applying it, so the caller can
log update/weight ratios; `step` applies them in place.

A rule is `rule(w, dw, state, lr, **hyper) -> (update, new_state)` with `state` a dict owned
by one parameter ({} before the first step). Hyperparameters are turned into Python floats
first: a numpy float64 lr would otherwise upcast float32 updates.
"""

from collections.abc import Callable

import numpy as np

State = dict[str, np.ndarray]
UpdateRule = Callable[..., tuple[np.ndarray, State]]


def sgd(w: np.ndarray, dw: np.ndarray, state: State, lr: float) -> tuple[np.ndarray, State]:
    """update = -lr * dw; no state."""
    return -float(lr) * dw, state


def sgd_momentum(
    w: np.ndarray, dw: np.ndarray, state: State, lr: float, momentum: float = 0.9
) -> tuple[np.ndarray, State]:
    """v = momentum * v - lr * dw (v starts at 0, shaped and typed like w); update = v.

    The returned update is the stored velocity itself; treat it as read-only.
    """
    velocity = state.get("velocity")
    if velocity is None:
        velocity = np.zeros_like(w)
    velocity = float(momentum) * velocity - float(lr) * dw
    return velocity, {"velocity": velocity}


UPDATE_RULES: dict[str, UpdateRule] = {
    "sgd": sgd,
    "sgd_momentum": sgd_momentum,
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
