import numpy as np
import pytest

from pipeline.optim import UPDATE_RULES, sgd, sgd_momentum, step

CURVATURES = np.array([1.0, 0.01])  # ill-conditioned: one steep, one shallow direction


def quadratic_loss(w: np.ndarray) -> float:
    return float(0.5 * np.sum(CURVATURES * w**2))


def minimise(rule: str, steps: int, lr: float, **hyper) -> float:
    params = {"w": np.array([1.0, 1.0])}
    states = {}
    for _ in range(steps):
        step(params, {"w": CURVATURES * params["w"]}, states, rule, lr, **hyper)
    return quadratic_loss(params["w"])


def test_sgd_update_is_minus_lr_times_gradient():
    w, dw = np.array([1.0, 2.0]), np.array([0.5, -4.0])

    update, state = sgd(w, dw, {}, lr=0.1)

    np.testing.assert_array_equal(update, [-0.05, 0.4])
    assert state == {}


def test_sgd_momentum_accumulates_velocity():
    w, dw = np.zeros(2), np.array([1.0, -2.0])

    first, state = sgd_momentum(w, dw, {}, lr=0.1, momentum=0.9)
    second, state = sgd_momentum(w, dw, state, lr=0.1, momentum=0.9)

    np.testing.assert_allclose(first, [-0.1, 0.2], rtol=1e-15)
    np.testing.assert_allclose(second, [-0.19, 0.38], rtol=1e-15)  # 0.9 * v - 0.1 * dw
    np.testing.assert_array_equal(state["velocity"], second)


def test_momentum_beats_sgd_on_an_ill_conditioned_quadratic():
    plain = minimise("sgd", steps=100, lr=0.5)
    heavy = minimise("sgd_momentum", steps=100, lr=0.5, momentum=0.9)

    # sgd shrinks the shallow coordinate by (1 - 0.5 * 0.01) per step, the steep one by 0.5:
    # after 100 steps the shallow half of the loss is still at 37 % of its start
    assert plain == pytest.approx(0.5 * 0.01 * (1 - 0.5 * 0.01) ** 200, rel=1e-9)
    assert heavy < 0.01 * plain


@pytest.mark.parametrize("rule", sorted(UPDATE_RULES))
def test_step_updates_in_place_and_keeps_float32(rule):
    rng = np.random.default_rng(0)
    params = {"W1": rng.standard_normal((4, 3)).astype(np.float32),
              "b1": np.zeros(3, dtype=np.float32)}
    grads = {name: np.ones_like(p) for name, p in params.items()}
    before = {name: p.copy() for name, p in params.items()}
    W1 = params["W1"]
    states = {}

    # a numpy float64 lr must not upcast float32 updates
    updates = step(params, grads, states, rule, np.float64(0.01))

    assert params["W1"] is W1
    for name, p in params.items():
        assert updates[name].dtype == np.float32
        np.testing.assert_allclose(p, before[name] - 0.01, rtol=1e-6)
        np.testing.assert_array_equal(p, before[name] + updates[name])


def test_momentum_state_matches_each_param():
    params = {"W1": np.ones((5, 2), dtype=np.float32), "b1": np.ones(2, dtype=np.float32)}
    grads = {name: np.ones_like(p) for name, p in params.items()}
    states = {}

    step(params, grads, states, "sgd_momentum", lr=0.1, momentum=0.5)
    step(params, grads, states, "sgd_momentum", lr=0.1, momentum=0.5)

    assert states.keys() == params.keys()
    for name, p in params.items():
        velocity = states[name]["velocity"]
        assert velocity.shape == p.shape and velocity.dtype == np.float32
        np.testing.assert_allclose(velocity, -0.15, rtol=1e-6)


def test_unknown_rule_raises_value_error_naming_it():
    with pytest.raises(ValueError, match="'adam'.*sgd, sgd_momentum"):
        step({}, {}, {}, "adam", 0.1)
