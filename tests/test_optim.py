import numpy as np
import pytest

from pipeline.optim import HYPERPARAMETERS, UPDATE_RULES, adam, nesterov, sgd, sgd_momentum, step

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
    first = first.copy()  # the update is the velocity buffer, moved in place by the next step
    second, state = sgd_momentum(w, dw, state, lr=0.1, momentum=0.9)

    np.testing.assert_allclose(first, [-0.1, 0.2], rtol=1e-15)
    np.testing.assert_allclose(second, [-0.19, 0.38], rtol=1e-15)  # 0.9 * v - 0.1 * dw
    np.testing.assert_array_equal(state["velocity"], second)


def test_nesterov_looks_ahead():
    w, dw = np.zeros(1), np.array([1.0])

    first, state = nesterov(w, dw, {}, lr=0.1, momentum=0.9)
    second, state = nesterov(w, dw, state, lr=0.1, momentum=0.9)

    # v1 = -0.1: update -0.9 * 0 + 1.9 * v1; v2 = -0.19: update -0.9 * v1 + 1.9 * v2
    np.testing.assert_allclose(first, [-0.19], rtol=1e-15)
    np.testing.assert_allclose(second, [0.09 - 0.361], rtol=1e-14)
    np.testing.assert_allclose(state["velocity"], [-0.19], rtol=1e-15)


def test_adam_first_step_is_lr_times_the_sign_and_counts_steps():
    w, dw = np.zeros(3), np.array([1e-3, -50.0, 0.0])

    update, state = adam(w, dw, {}, lr=0.01, eps=1e-8)
    second, state = adam(w, dw, state, lr=0.01, eps=1e-8)

    # bias correction makes m_hat = dw and v_hat = dw^2 at t = 1: a step of lr, whatever |dw|
    np.testing.assert_allclose(update, -0.01 * dw / (np.abs(dw) + 1e-8), rtol=1e-12)
    np.testing.assert_allclose(update, [-0.01, 0.01, 0.0], rtol=1e-5)
    np.testing.assert_allclose(second, update, rtol=1e-12)  # a constant gradient: same step
    assert state["t"] == 2
    np.testing.assert_allclose(state["m"], (1 - 0.9**2) * dw, rtol=1e-12)
    np.testing.assert_allclose(state["v"], (1 - 0.999**2) * dw**2, rtol=1e-12)


def test_adam_matches_the_textbook_form():
    rng = np.random.default_rng(0)
    w, state = np.zeros(4), {}
    m, v = np.zeros(4), np.zeros(4)
    for t in range(1, 6):
        dw = rng.standard_normal(4)
        update, state = adam(w, dw, state, lr=1e-3, beta1=0.8, beta2=0.99, eps=1e-4)
        m = 0.8 * m + 0.2 * dw
        v = 0.99 * v + 0.01 * dw**2
        textbook = -1e-3 * (m / (1 - 0.8**t)) / (np.sqrt(v / (1 - 0.99**t)) + 1e-4)

        np.testing.assert_allclose(update, textbook, rtol=1e-12)


def test_momentum_beats_sgd_on_an_ill_conditioned_quadratic():
    plain = minimise("sgd", steps=100, lr=0.5)
    heavy = minimise("sgd_momentum", steps=100, lr=0.5, momentum=0.9)
    ahead = minimise("nesterov", steps=100, lr=0.5, momentum=0.9)

    # sgd shrinks the shallow coordinate by (1 - 0.5 * 0.01) per step, the steep one by 0.5:
    # after 100 steps the shallow half of the loss is still at 37 % of its start
    assert plain == pytest.approx(0.5 * 0.01 * (1 - 0.5 * 0.01) ** 200, rel=1e-9)
    assert heavy < 0.01 * plain
    assert ahead < 0.01 * plain


def test_adam_beats_sgd_on_an_ill_conditioned_quadratic():
    plain = minimise("sgd", steps=100, lr=0.5)
    adaptive = minimise("adam", steps=100, lr=0.1)

    # Adam steps ~lr along both directions whatever their curvature, so the shallow one
    # is not left behind
    assert adaptive < 0.01 * plain


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

    # every rule's first step on a gradient of ones moves each weight by -0.01
    # (nesterov: (1 + 0.9) * 0.01; adam: lr * sign)
    size = {"nesterov": 0.019}.get(rule, 0.01)
    assert params["W1"] is W1
    for name, p in params.items():
        assert updates[name].dtype == np.float32
        np.testing.assert_allclose(p, before[name] - size, rtol=1e-5)
        np.testing.assert_array_equal(p, before[name] + updates[name])


@pytest.mark.parametrize("rule", sorted(UPDATE_RULES))
def test_state_is_per_parameter(rule):
    params = {"W1": np.ones((5, 2), dtype=np.float32), "b1": np.ones(2, dtype=np.float32)}
    grads = {"W1": np.ones((5, 2), dtype=np.float32), "b1": np.full(2, 3.0, np.float32)}
    states = {}

    hyper = {"momentum": 0.5} if "momentum" in HYPERPARAMETERS[rule] else {}
    step(params, grads, states, rule, lr=0.1, **hyper)
    step(params, grads, states, rule, lr=0.1, **hyper)

    assert states.keys() == params.keys()
    for name, p in params.items():
        buffers = {k: v for k, v in states[name].items() if isinstance(v, np.ndarray)}
        assert all(b.shape == p.shape and b.dtype == np.float32 for b in buffers.values())
    if rule in ("sgd_momentum", "nesterov"):
        np.testing.assert_allclose(states["W1"]["velocity"], -0.15, rtol=1e-6)
        np.testing.assert_allclose(states["b1"]["velocity"], -0.45, rtol=1e-6)
    if rule == "adam":
        assert states["W1"]["t"] == states["b1"]["t"] == 2


def test_every_rule_has_its_hyperparameters_listed():
    assert HYPERPARAMETERS.keys() == UPDATE_RULES.keys()
    assert HYPERPARAMETERS["adam"] == ("beta1", "beta2", "eps")


def test_unknown_rule_raises_value_error_naming_it():
    with pytest.raises(ValueError, match="'rmsprop'.*sgd, sgd_momentum, nesterov, adam"):
        step({}, {}, {}, "rmsprop", 0.1)
