import math

import numpy as np
import pytest

from pipeline.gradcheck import GradCheck, check_net_grads
from pipeline.net import (
    NetSpec,
    accuracy,
    data_loss,
    forward,
    init_params,
    loss_and_grads,
    predict,
    reg_loss,
    weight_names,
)
from pipeline.optim import step

CIFAR_STD = 64.0  # pixel std of mean-subtracted CIFAR-10, the scale the net sees


def images(rng, N, D=3072, dtype=np.float64):
    return (CIFAR_STD * rng.standard_normal((N, D))).astype(dtype)


def labels(rng, N, C=10):
    return rng.integers(0, C, size=N)


def test_init_params_shapes_dtype_and_zero_biases():
    spec = NetSpec(input_dim=7, hidden_dims=(5, 4), num_classes=3)

    params = init_params(spec, np.random.default_rng(0), dtype=np.float32)

    assert {k: v.shape for k, v in params.items()} == {
        "W1": (7, 5), "b1": (5,), "W2": (5, 4), "b2": (4,), "W3": (4, 3), "b3": (3,)}
    assert all(p.dtype == np.float32 for p in params.values())
    assert all(not params[b].any() for b in ("b1", "b2", "b3"))


@pytest.mark.parametrize("init, expected_std", [
    ("gaussian", 1e-4),
    ("xavier", math.sqrt(1 / 3072)),
    ("he", math.sqrt(2 / 3072)),
])
def test_init_params_std_of_first_layer(init, expected_std):
    spec = NetSpec(init=init)

    W1 = init_params(spec, np.random.default_rng(0), dtype=np.float64)["W1"]

    # 153600 draws: the sample std is within ~0.2 % of the true one
    assert W1.std() == pytest.approx(expected_std, rel=0.01)


def test_same_seed_gives_same_net_in_float32_and_float64():
    spec = NetSpec(hidden_dims=(8,))

    p32 = init_params(spec, np.random.default_rng(3), dtype=np.float32)
    p64 = init_params(spec, np.random.default_rng(3), dtype=np.float64)

    np.testing.assert_array_equal(p32["W1"], p64["W1"].astype(np.float32))


@pytest.mark.parametrize("field, value, allowed", [
    ("activation", "tanhh", "relu"),
    ("init", "kaiming", "gaussian, he, xavier"),
])
def test_unknown_choice_raises_value_error_naming_it(field, value, allowed):
    with pytest.raises(ValueError, match=f"'{value}'.*{allowed}"):
        NetSpec(**{field: value})


def test_spec_accepts_hydra_style_lists():
    spec = NetSpec(hidden_dims=[20, 10])

    assert spec.hidden_dims == (20, 10)
    assert spec.dims == (3072, 20, 10, 10)


def test_weight_names_are_in_numeric_layer_order():
    spec = NetSpec(input_dim=4, hidden_dims=(3,) * 10, num_classes=2)

    params = init_params(spec, np.random.default_rng(0))

    assert weight_names(params) == [f"W{layer}" for layer in range(1, 12)]


def test_forward_shapes_for_any_depth():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((6, 12))
    for hidden_dims in [(), (9,), (9, 8, 7)]:
        spec = NetSpec(input_dim=12, hidden_dims=hidden_dims, num_classes=4)

        scores, caches = forward(init_params(spec, rng), X, spec)

        assert scores.shape == (6, 4)
        assert len(caches) == len(hidden_dims) + 1


def test_initial_loss_is_log_num_classes():
    rng = np.random.default_rng(0)
    spec = NetSpec()
    params = init_params(spec, rng)
    X, y = images(rng, 100, dtype=np.float32), labels(rng, 100)

    loss, _ = loss_and_grads(params, X, y, 0.0, spec)

    # weights of 1e-4 make all scores ~1e-4, so every class gets probability ~1/10
    assert abs(loss - math.log(10)) < 0.01


def test_regularization_adds_exactly_half_reg_sum_of_squared_weights():
    rng = np.random.default_rng(1)
    spec = NetSpec(input_dim=30, hidden_dims=(20, 15), init="he")
    params = init_params(spec, rng, dtype=np.float64)
    X, y = images(rng, 8, D=30), labels(rng, 8)
    reg = 0.7

    loss0, grads0 = loss_and_grads(params, X, y, 0.0, spec)
    loss, grads = loss_and_grads(params, X, y, reg, spec)

    penalty = 0.5 * reg * sum(np.sum(params[w] ** 2) for w in ("W1", "W2", "W3"))
    assert penalty > 1.0
    assert loss - loss0 == pytest.approx(penalty, rel=1e-13)
    assert reg_loss(params, reg) == pytest.approx(penalty, rel=1e-13)
    for name in params:
        expected = reg * params[name] if name.startswith("W") else 0.0
        np.testing.assert_allclose(grads[name] - grads0[name], expected, rtol=1e-12, atol=1e-15)


def test_grad_check_of_the_3072_50_10_net():
    rng = np.random.default_rng(0)
    spec = NetSpec()
    params = init_params(spec, rng)
    X, y = images(rng, 5), labels(rng, 5)

    check = check_net_grads(params, X, y, 0.0, spec, rng, num_checks=20)

    assert check.checked + check.kinks == 4 * 20 - 10  # b2 has only 10 coordinates
    assert check.passed(1e-7)
    # W2 and b2 have gradients >= 1e-3, where 1e-7 is resolvable and met outright; W1 and b1
    # (|g| ~ 1e-7..1e-2) are bounded by the rounding floor, see pipeline.gradcheck
    assert check.max_rel_error["W2"] <= 1e-7
    assert check.max_rel_error["b2"] <= 1e-7
    assert check.rounding == pytest.approx(np.finfo(float).eps * math.log(10) / 1e-5, rel=1e-3)


def test_grad_check_of_a_deeper_net_with_regularization():
    rng = np.random.default_rng(2)
    spec = NetSpec(input_dim=20, hidden_dims=(15, 12), init="he")
    params = init_params(spec, rng)
    X, y = rng.standard_normal((5, 20)), labels(rng, 5)

    check = check_net_grads(params, X, y, 0.1, spec, rng, num_checks=20)

    assert check.checked + check.kinks == 20 * 3 + 15 + 12 + 10
    assert check.passed(1e-7)
    # he init makes most gradients 1e-3..1, where 1e-7 is resolvable; met at this seed
    assert max(check.max_rel_error.values()) <= 1e-7


def test_grad_check_of_softmax_regression():
    rng = np.random.default_rng(3)
    spec = NetSpec(input_dim=20, hidden_dims=(), init="xavier")

    check = check_net_grads(init_params(spec, rng), rng.standard_normal((5, 20)),
                            labels(rng, 5), 0.0, spec, rng)

    assert check.kinks == 0
    assert check.passed(1e-7)
    assert max(check.max_rel_error.values()) <= 1e-7


def test_grad_check_excludes_and_counts_kink_crossings():
    rng = np.random.default_rng(4)
    spec = NetSpec(input_dim=20, hidden_dims=(15,), init="he")
    params = init_params(spec, rng, dtype=np.float64)
    X, y = rng.standard_normal((5, 20)), labels(rng, 5)
    h = 1e-5
    # put hidden unit 0 of image 0 at +h/2, so moving b1[0] by -h switches it off
    pre0 = (X[0] @ params["W1"])[0]
    params["b1"][0] = h / 2 - pre0

    check = check_net_grads(params, X, y, 0.0, spec, rng, num_checks=15, h=h)

    assert check.kinks >= 1
    assert check.checked + check.kinks == 15 * 2 + 15 + 10
    assert check.passed(1e-7)


def test_grad_check_without_kink_exclusion_would_fail_there():
    rng = np.random.default_rng(4)
    spec = NetSpec(input_dim=20, hidden_dims=(15,), init="he")
    params = init_params(spec, rng, dtype=np.float64)
    X, y = rng.standard_normal((5, 20)), labels(rng, 5)
    h = 1e-5
    params["b1"][0] = h / 2 - (X[0] @ params["W1"])[0]

    _, grads = loss_and_grads(params, X, y, 0.0, spec)
    b1 = params["b1"]
    b1[0] += h
    loss_plus = data_loss(params, X, y, spec)
    b1[0] -= 2 * h
    loss_minus = data_loss(params, X, y, spec)

    # the quotient averages the two linear pieces; it misses the one-sided gradient by far
    numeric = (loss_plus - loss_minus) / (2 * h)
    assert abs(numeric - grads["b1"][0]) > 1e-3 * abs(grads["b1"][0])


def test_grad_check_passes_only_within_tolerance_plus_rounding():
    rounding = 1e-10
    g = np.array([1e-2, 1e-5])

    def check(numeric):
        return GradCheck({}, 0, 2, rounding, {"b1": g}, {"b1": np.asarray(numeric)})

    assert check(g * (1 + 0.9e-7)).passed(1e-7)
    assert not check([1e-2 * (1 + 2e-7), 1e-5]).passed(1e-7)
    assert check([1e-2, 1e-5 + 1.9 * rounding]).passed(1e-7)
    assert not check([1e-2, 1e-5 + 2.1 * rounding]).passed(1e-7)


def test_two_hidden_layer_net_overfits_20_examples():
    rng = np.random.default_rng(5)
    spec = NetSpec(hidden_dims=(50, 50), weight_scale=1e-2)
    params = init_params(spec, rng, dtype=np.float32)
    X, y = images(rng, 20, dtype=np.float32), labels(rng, 20)
    states = {}

    initial_loss, _ = loss_and_grads(params, X, y, 0.0, spec)
    for _ in range(200):
        loss, grads = loss_and_grads(params, X, y, 0.0, spec)
        step(params, grads, states, "sgd_momentum", lr=1e-3, momentum=0.9)

    assert accuracy(params, X, y, spec) == 1.0
    assert data_loss(params, X, y, spec) < 0.01 < initial_loss


def test_float32_in_gives_float32_out():
    rng = np.random.default_rng(6)
    spec = NetSpec(hidden_dims=(50, 20))
    params = init_params(spec, rng, dtype=np.float32)
    X, y = images(rng, 10, dtype=np.float32), labels(rng, 10)

    # a numpy float64 reg must not upcast the float32 grads
    loss, grads = loss_and_grads(params, X, y, np.float64(1e-3), spec)
    scores, _ = forward(params, X.astype(np.float64), spec)

    assert type(loss) is float
    assert grads.keys() == params.keys()
    assert all(grads[k].dtype == np.float32 and grads[k].shape == params[k].shape
               for k in params)
    assert scores.dtype == np.float32


def test_predict_in_chunks_equals_predict_at_once():
    rng = np.random.default_rng(7)
    spec = NetSpec(input_dim=30, hidden_dims=(20,), init="he")
    params = init_params(spec, rng)
    X, y = images(rng, 103, D=30, dtype=np.float32), labels(rng, 103)

    chunked = predict(params, X, spec, batch_size=10)
    whole = predict(params, X, spec, batch_size=1000)

    assert chunked.dtype.kind == "i"
    np.testing.assert_array_equal(chunked, whole)
    np.testing.assert_array_equal(whole, forward(params, X, spec)[0].argmax(axis=1))
    assert accuracy(params, X, y, spec, batch_size=10) == np.mean(whole == y)
    assert data_loss(params, X, y, spec, batch_size=10) == pytest.approx(
        data_loss(params, X, y, spec, batch_size=1000), rel=1e-6)
