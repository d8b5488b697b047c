import math
from dataclasses import replace

import numpy as np
import pytest

from pipeline.activations import ACTIVATION_NAMES
from pipeline.gradcheck import GradCheck, check_net_grads
from pipeline.net import (
    INITS,
    NetSpec,
    accuracy,
    activation_pieces,
    data_loss,
    forward,
    init_params,
    init_state,
    loss_and_grads,
    predict,
    reg_loss,
    same_architecture,
    weight_names,
)
from pipeline.optim import step

CIFAR_STD = 64.0  # pixel std of mean-subtracted CIFAR-10, the scale the net sees
LECTURE = NetSpec(weight_scale=1e-4)  # the product's default net, 3072-50-10


def images(rng, N, D=3072, dtype=np.float64):
    return (CIFAR_STD * rng.standard_normal((N, D))).astype(dtype)


def labels(rng, N, C=10):
    return rng.integers(0, C, size=N)


def small(activation="relu", **kw) -> NetSpec:
    """12-9-7-5: two hidden layers, small enough for float64 gradient checks of everything."""
    return NetSpec(input_dim=12, hidden_dims=(9, 7), num_classes=5, activation=activation,
                   init="he", **kw)


# ---- initialisation --------------------------------------------------------------------------

def test_init_params_shapes_dtype_and_zero_biases():
    spec = NetSpec(input_dim=7, hidden_dims=(5, 4), num_classes=3)

    params = init_params(spec, np.random.default_rng(0), dtype=np.float32)

    assert {k: v.shape for k, v in params.items()} == {
        "W1": (7, 5), "b1": (5,), "W2": (5, 4), "b2": (4,), "W3": (4, 3), "b3": (3,)}
    assert all(p.dtype == np.float32 for p in params.values())
    assert all(not params[b].any() for b in ("b1", "b2", "b3"))


@pytest.mark.parametrize("init, expected_std", [
    ("gaussian", 0.01),  # the lecture's small random numbers, the default scale
    ("unit_gaussian", 1.0),
    ("xavier", math.sqrt(1 / 3072)),
    ("glorot", math.sqrt(2 / (3072 + 50))),
    ("he", math.sqrt(2 / 3072)),
])
def test_init_params_std_of_first_layer(init, expected_std):
    spec = NetSpec(init=init)

    W1 = init_params(spec, np.random.default_rng(0), dtype=np.float64)["W1"]

    # 153600 draws: the sample std is within ~0.2 % of the true one
    assert W1.std() == pytest.approx(expected_std, rel=0.01)
    assert abs(W1.mean()) < 0.01 * expected_std


def test_gaussian_scale_is_configurable_and_zeros_is_all_zero():
    rng = np.random.default_rng(0)

    scaled = init_params(NetSpec(weight_scale=1e-4), rng, dtype=np.float64)["W1"]
    zeros = init_params(NetSpec(init="zeros"), rng)

    assert scaled.std() == pytest.approx(1e-4, rel=0.01)
    assert not any(p.any() for p in zeros.values())


def test_inits_are_the_documented_ones():
    assert INITS == ("zeros", "gaussian", "unit_gaussian", "xavier", "glorot", "he")


def test_bias_init_sets_hidden_biases_but_not_the_scores():
    spec = NetSpec(input_dim=4, hidden_dims=(3, 2), num_classes=2, bias_init=0.01)

    params = init_params(spec, np.random.default_rng(0), dtype=np.float64)

    np.testing.assert_array_equal(params["b1"], [0.01] * 3)
    np.testing.assert_array_equal(params["b2"], [0.01] * 2)
    np.testing.assert_array_equal(params["b3"], [0.0] * 2)


def test_same_seed_gives_same_net_in_float32_and_float64():
    spec = NetSpec(hidden_dims=(8,))

    p32 = init_params(spec, np.random.default_rng(3), dtype=np.float32)
    p64 = init_params(spec, np.random.default_rng(3), dtype=np.float64)

    np.testing.assert_array_equal(p32["W1"], p64["W1"].astype(np.float32))


def test_batchnorm_prelu_and_maxout_params_and_state():
    bn_prelu = NetSpec(input_dim=6, hidden_dims=(4, 3), num_classes=2, activation="prelu",
                       batchnorm=True, leaky_slope=0.3)
    maxout = NetSpec(input_dim=6, hidden_dims=(4,), num_classes=2, activation="maxout",
                     maxout_pieces=2)
    rng = np.random.default_rng(0)

    p = init_params(bn_prelu, rng)
    m = init_params(maxout, rng)
    state = init_state(bn_prelu)

    assert list(p) == ["W1", "b1", "gamma1", "beta1", "alpha1",
                       "W2", "b2", "gamma2", "beta2", "alpha2", "W3", "b3"]
    np.testing.assert_array_equal(p["gamma2"], [1.0] * 3)
    np.testing.assert_array_equal(p["beta2"], [0.0] * 3)
    np.testing.assert_allclose(p["alpha1"], [0.3] * 4)  # PReLU starts as leaky ReLU
    assert {k: v.tolist() for k, v in state.items()} == {
        "running_mean1": [0.0] * 4, "running_var1": [1.0] * 4,
        "running_mean2": [0.0] * 3, "running_var2": [1.0] * 3}
    assert init_state(LECTURE) == {}
    # maxout with k = 2 doubles the weights of its layer: 6 x (2 x 4), then 4 x 2
    assert (m["W1"].shape, m["b1"].shape, m["W2"].shape) == ((6, 8), (8,), (4, 2))


@pytest.mark.parametrize("field, value, allowed", [
    ("activation", "tanhh", "elu, leaky_relu, maxout, prelu, relu, sigmoid, tanh"),
    ("init", "kaiming", "gaussian, glorot, he, unit_gaussian, xavier, zeros"),
])
def test_unknown_choice_raises_value_error_naming_it(field, value, allowed):
    with pytest.raises(ValueError, match=f"'{value}'.*{allowed}"):
        NetSpec(**{field: value})


def test_spec_refuses_a_dropout_probability_of_one():
    with pytest.raises(ValueError, match="dropout"):
        NetSpec(dropout=1.0)


def test_spec_accepts_hydra_style_lists():
    spec = NetSpec(hidden_dims=[20, 10])

    assert spec.hidden_dims == (20, 10)
    assert spec.dims == (3072, 20, 10, 10)


def test_same_architecture_ignores_what_only_shapes_training():
    base = small(batchnorm=True)

    assert same_architecture(base, replace(base, init="xavier", dropout=0.5, bias_init=0.1))
    assert not same_architecture(base, replace(base, hidden_dims=(9, 8)))
    assert not same_architecture(base, replace(base, batchnorm=False))
    assert not same_architecture(base, replace(base, activation="tanh"))


def test_weight_names_are_in_numeric_layer_order():
    spec = NetSpec(input_dim=4, hidden_dims=(3,) * 10, num_classes=2, batchnorm=True,
                   activation="prelu")

    params = init_params(spec, np.random.default_rng(0))

    assert weight_names(params) == [f"W{layer}" for layer in range(1, 12)]


# ---- forward ----------------------------------------------------------------------------------

@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_forward_shapes_for_any_depth(activation):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((6, 12))
    for hidden_dims in [(), (9,), (9, 8, 7)]:
        spec = NetSpec(input_dim=12, hidden_dims=hidden_dims, num_classes=4,
                       activation=activation, batchnorm=True)

        scores, caches = forward(init_params(spec, rng), X, spec,
                                 state=init_state(spec))

        assert scores.shape == (6, 4)
        assert len(caches) == len(hidden_dims) + 1


def test_the_lectures_ten_layer_500_unit_net_trains_a_step_in_float32():
    rng = np.random.default_rng(0)
    spec = NetSpec(hidden_dims=(500,) * 10, init="he", batchnorm=True)
    params, state = init_params(spec, rng), init_state(spec)
    X, y = images(rng, 20, dtype=np.float32), labels(rng, 20)

    loss, grads = loss_and_grads(params, X, y, 1e-3, spec, state=state)
    data_part = loss - reg_loss(params, 1e-3)
    step(params, grads, {}, "sgd_momentum", 1e-3, momentum=0.9)

    assert len(weight_names(params)) == 11
    assert grads.keys() == params.keys()
    assert all(g.dtype == np.float32 and np.all(np.isfinite(g)) for g in grads.values())
    # BN keeps every layer at unit scale: scores of std ~1, a first data loss near ln 10
    assert 1.5 < data_part < 4.0
    assert state["running_var10"].min() < 1.0  # every layer's running averages moved


def test_initial_loss_is_log_num_classes():
    rng = np.random.default_rng(0)
    params = init_params(LECTURE, rng)
    X, y = images(rng, 100, dtype=np.float32), labels(rng, 100)

    loss, _ = loss_and_grads(params, X, y, 0.0, LECTURE)

    # weights of 1e-4 make all scores ~1e-4, so every class gets probability ~1/10
    assert abs(loss - math.log(10)) < 0.01


def test_batchnorm_net_needs_its_running_averages_at_test_time():
    spec = small(batchnorm=True)
    params = init_params(spec, np.random.default_rng(0))

    with pytest.raises(ValueError, match="running averages"):
        predict(params, np.zeros((2, 12)), spec)


def test_batchnorm_test_mode_reads_the_state_that_training_moved():
    rng = np.random.default_rng(1)
    spec = small(batchnorm=True, bn_momentum=0.0)  # momentum 0: running = last batch
    params, state = init_params(spec, rng, np.float64), init_state(spec, np.float64)
    X, y = rng.standard_normal((50, 12)) + 3.0, labels(rng, 50, 5)

    loss_train, _ = loss_and_grads(params, X, y, 0.0, spec, state=state)

    # with the running averages equal to this batch's statistics (eps aside), test mode on
    # the same batch computes what train mode did
    assert data_loss(params, X, y, spec, state=state) == pytest.approx(loss_train, rel=1e-9)
    np.testing.assert_allclose(state["running_mean1"],
                               (X @ params["W1"] + params["b1"]).mean(axis=0), rtol=1e-12)


def test_dropout_changes_training_only_and_follows_the_generator():
    rng = np.random.default_rng(2)
    spec = small(dropout=0.5)
    plain = replace(spec, dropout=0.0)
    params = init_params(spec, rng, np.float64)
    X, y = rng.standard_normal((30, 12)), labels(rng, 30, 5)

    def train_loss(seed):
        return loss_and_grads(params, X, y, 0.0, spec, rng=np.random.default_rng(seed))[0]

    assert train_loss(1) == train_loss(1)
    assert train_loss(1) != train_loss(2)
    assert data_loss(params, X, y, spec) == data_loss(params, X, y, plain)  # test: identity
    with pytest.raises(ValueError, match="Generator"):
        loss_and_grads(params, X, y, 0.0, spec)


# ---- gradients -------------------------------------------------------------------------------
#
# Bound of every check below: each compared coordinate has |a - n| <= 1e-7 max(|a|, |n|)
# plus twice the float64 rounding noise eps |L| / h (h = 1e-5), see pipeline.gradcheck.
# Coordinates whose +-h step moves a unit onto another piece of ReLU / leaky ReLU / PReLU /
# ELU / maxout are counted as kinks and left out; the bound is not loosened for them.

GRAD_TOL = 1e-7
BN_MODES = ["off", "train", "test"]


def _full_check(activation, bn_mode, reg, **kw) -> tuple[GradCheck, dict]:
    rng = np.random.default_rng(11)
    spec = small(activation, batchnorm=bn_mode != "off", **kw)
    params = init_params(spec, rng, np.float64)
    for name in params:  # BN scales, shifts and biases away from their trivial starts
        if not name.startswith("W"):
            params[name] = params[name] + 0.3 * rng.standard_normal(params[name].shape)
    state = {name: s + 0.5 * rng.random(s.shape) for name, s in init_state(spec).items()}
    X, y = rng.standard_normal((6, 12)), labels(rng, 6, 5)
    mode = "test" if bn_mode == "test" else "train"
    check = check_net_grads(params, X, y, reg, spec, rng, num_checks=15, mode=mode,
                            state=state)
    return check, params


@pytest.mark.parametrize("reg", [0.0, 0.3])
@pytest.mark.parametrize("bn_mode", BN_MODES)
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_full_loss_gradients_match_centred_differences(activation, bn_mode, reg):
    check, params = _full_check(activation, bn_mode, reg)

    assert check.passed(GRAD_TOL), check.excess_error()
    assert check.analytic.keys() == params.keys()
    sampled = sum(min(15, p.size) for p in params.values())
    assert check.checked + check.kinks == sampled
    assert check.kinks <= 0.05 * sampled  # h = 1e-5 steps rarely reach a kink


@pytest.mark.parametrize("activation", ["relu", "maxout"])
def test_full_loss_gradients_with_dropout(activation):
    check, _ = _full_check(activation, "train", 0.1, dropout=0.4)

    assert check.passed(GRAD_TOL), check.excess_error()
    assert check.checked >= 0.95 * 98  # 98 sampled coordinates, all of them smooth here


def test_grad_check_of_the_3072_50_10_net():
    rng = np.random.default_rng(0)
    params = init_params(LECTURE, rng)
    X, y = images(rng, 5), labels(rng, 5)

    check = check_net_grads(params, X, y, 0.0, LECTURE, rng, num_checks=20)

    assert check.checked + check.kinks == 4 * 20 - 10  # b2 has only 10 coordinates
    assert check.passed(1e-7)
    # W2 and b2 have gradients >= 1e-3, where 1e-7 is resolvable and met outright; W1 and b1
    # (|g| ~ 1e-7..1e-2) are bounded by the rounding floor, see pipeline.gradcheck
    assert check.max_rel_error["W2"] <= 1e-7
    assert check.max_rel_error["b2"] <= 1e-7
    assert check.rounding == pytest.approx(np.finfo(float).eps * math.log(10) / 1e-5, rel=1e-3)


def test_grad_check_of_softmax_regression():
    rng = np.random.default_rng(3)
    spec = NetSpec(input_dim=20, hidden_dims=(), init="xavier")

    check = check_net_grads(init_params(spec, rng), rng.standard_normal((5, 20)),
                            labels(rng, 5), 0.0, spec, rng)

    assert check.kinks == 0
    assert check.passed(1e-7)
    assert max(check.max_rel_error.values()) <= 1e-7


def test_grad_check_of_the_last_layer_alone():
    rng = np.random.default_rng(5)
    spec = small(batchnorm=True, dropout=0.3)
    params, state = init_params(spec, rng, np.float64), init_state(spec, np.float64)
    X, y = rng.standard_normal((6, 12)), labels(rng, 6, 5)

    check = check_net_grads(params, X, y, 0.2, spec, rng, state=state, train_from=3)

    assert check.analytic.keys() == {"W3", "b3"}
    assert check.kinks == 0  # frozen layers do not move: no unit changes piece
    assert check.passed(GRAD_TOL)


def _unit_at_half_h(spec, params, X, h):
    """Put hidden unit 0 of image 0 at +h/2, so moving b1[0] by -h switches it off."""
    params["b1"][0] = h / 2 - (X[0] @ params["W1"])[0]


def test_grad_check_excludes_and_counts_kink_crossings():
    rng = np.random.default_rng(4)
    spec = NetSpec(input_dim=20, hidden_dims=(15,), init="he")
    params = init_params(spec, rng, dtype=np.float64)
    X, y = rng.standard_normal((5, 20)), labels(rng, 5)
    h = 1e-5
    _unit_at_half_h(spec, params, X, h)

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
    _unit_at_half_h(spec, params, X, h)

    _, grads = loss_and_grads(params, X, y, 0.0, spec)
    b1 = params["b1"]
    b1[0] += h
    loss_plus = data_loss(params, X, y, spec)
    b1[0] -= 2 * h
    loss_minus = data_loss(params, X, y, spec)

    # the quotient averages the two linear pieces; it misses the one-sided gradient by far
    numeric = (loss_plus - loss_minus) / (2 * h)
    assert abs(numeric - grads["b1"][0]) > 1e-3 * abs(grads["b1"][0])


def test_maxout_pieces_change_where_two_pieces_tie():
    rng = np.random.default_rng(6)
    spec = NetSpec(input_dim=5, hidden_dims=(3,), num_classes=2, activation="maxout",
                   init="he")
    params = init_params(spec, rng, np.float64)
    X = rng.standard_normal((2, 5))
    # unit 0 of image 0: piece 1 (column 3) h/2 above piece 0 (column 0)
    pre = X[0] @ params["W1"] + params["b1"]
    params["b1"][3] += pre[0] - pre[3] + 0.5e-5

    base = activation_pieces(params, X, spec)
    params["b1"][3] -= 1e-5
    moved = activation_pieces(params, X, spec)

    assert base[0][0, 0] == 1 and moved[0][0, 0] == 0
    check = check_net_grads(params, X, np.array([0, 1]), 0.0, spec, rng, num_checks=30)
    assert check.kinks >= 1
    assert check.passed(GRAD_TOL)


def test_smooth_activations_have_no_pieces():
    spec = small("tanh")

    assert activation_pieces(init_params(spec, np.random.default_rng(0)), np.ones((2, 12)),
                             spec) == []


def test_grad_check_passes_only_within_tolerance_plus_rounding():
    rounding = 1e-10
    g = np.array([1e-2, 1e-5])

    def check(numeric):
        return GradCheck({}, 0, 2, rounding, {"b1": g}, {"b1": np.asarray(numeric)})

    assert check(g * (1 + 0.9e-7)).passed(1e-7)
    assert not check([1e-2 * (1 + 2e-7), 1e-5]).passed(1e-7)
    assert check([1e-2, 1e-5 + 1.9 * rounding]).passed(1e-7)
    assert not check([1e-2, 1e-5 + 2.1 * rounding]).passed(1e-7)


# ---- loss: regularization, freezing ---------------------------------------------------------

@pytest.mark.parametrize("batchnorm", [False, True])
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_regularization_adds_exactly_half_reg_sum_of_squared_weights(activation, batchnorm):
    rng = np.random.default_rng(1)
    spec = small(activation, batchnorm=batchnorm)
    params = init_params(spec, rng, dtype=np.float64)
    X, y = images(rng, 8, D=12), labels(rng, 8, 5)
    reg = 0.7

    loss0, grads0 = loss_and_grads(params, X, y, 0.0, spec)
    loss, grads = loss_and_grads(params, X, y, reg, spec)

    penalty = 0.5 * reg * sum(np.sum(params[w] ** 2) for w in ("W1", "W2", "W3"))
    assert penalty > 1.0
    assert loss - loss0 == pytest.approx(penalty, rel=1e-12)  # regularization raises the loss
    assert reg_loss(params, reg) == pytest.approx(penalty, rel=1e-13)
    for name in params:  # only weight matrices are penalised: not b, gamma, beta, alpha
        expected = reg * params[name] if name.startswith("W") else 0.0
        np.testing.assert_allclose(grads[name] - grads0[name], expected, rtol=1e-9, atol=1e-12)


def test_last_layer_only_gives_grads_of_the_scores_layer_and_keeps_the_whole_penalty():
    rng = np.random.default_rng(3)
    spec = small(batchnorm=True, dropout=0.5)
    params, state = init_params(spec, rng, np.float64), init_state(spec, np.float64)
    X, y = rng.standard_normal((10, 12)), labels(rng, 10, 5)
    features = forward(params, X, spec, state=state)[1][-1][0][0]  # input of the last layer

    loss, grads = loss_and_grads(params, X, y, 0.5, spec, state=state,
                                 rng=np.random.default_rng(0), train_from=3)
    head = NetSpec(input_dim=7, hidden_dims=(), num_classes=5)
    head_loss, head_grads = loss_and_grads({"W1": params["W3"], "b1": params["b3"]},
                                           features, y, 0.5, head)

    # the frozen layers ran in test mode (running averages, no dropout): a softmax
    # regression on their output, plus the constant penalty of the frozen weights
    assert grads.keys() == {"W3", "b3"}
    np.testing.assert_allclose(grads["W3"], head_grads["W1"], rtol=1e-12)
    frozen = reg_loss({"W1": params["W1"], "W2": params["W2"]}, 0.5)
    assert loss == pytest.approx(head_loss + frozen, rel=1e-12)
    np.testing.assert_array_equal(state["running_mean1"], 0.0)  # test mode: not moved
    with pytest.raises(ValueError, match="train_from"):
        loss_and_grads(params, X, y, 0.5, spec, state=state, train_from=4)


# ---- training behaviour and dtypes -------------------------------------------------------------

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


@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_float32_in_gives_float32_out(activation):
    rng = np.random.default_rng(6)
    spec = NetSpec(hidden_dims=(50, 20), activation=activation, batchnorm=True, dropout=0.2)
    params, state = init_params(spec, rng, dtype=np.float32), init_state(spec)
    X, y = images(rng, 10, dtype=np.float32), labels(rng, 10)

    # a numpy float64 reg must not upcast the float32 grads
    loss, grads = loss_and_grads(params, X, y, np.float64(1e-3), spec, state=state,
                                 rng=np.random.default_rng(0))
    scores, _ = forward(params, X.astype(np.float64), spec, state=state)

    assert type(loss) is float
    assert grads.keys() == params.keys()
    assert all(grads[k].dtype == np.float32 and grads[k].shape == params[k].shape
               for k in params)
    assert all(s.dtype == np.float32 for s in state.values())
    assert scores.dtype == np.float32


def test_predict_in_chunks_equals_predict_at_once():
    rng = np.random.default_rng(7)
    spec = NetSpec(input_dim=30, hidden_dims=(20,), init="he", batchnorm=True)
    params, state = init_params(spec, rng), init_state(spec)
    state["running_mean1"] += 0.5
    X, y = images(rng, 103, D=30, dtype=np.float32), labels(rng, 103)

    chunked = predict(params, X, spec, batch_size=10, state=state)
    whole = predict(params, X, spec, batch_size=1000, state=state)

    assert chunked.dtype.kind == "i"
    np.testing.assert_array_equal(chunked, whole)
    np.testing.assert_array_equal(whole, forward(params, X, spec, state=state)[0].argmax(1))
    assert accuracy(params, X, y, spec, batch_size=10, state=state) == np.mean(whole == y)
    assert data_loss(params, X, y, spec, batch_size=10, state=state) == pytest.approx(
        data_loss(params, X, y, spec, batch_size=1000, state=state), rel=1e-6)
