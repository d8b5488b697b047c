import math

import numpy as np
import pytest

from pipeline.gradcheck import check_grads, numeric_grad, rel_error
from pipeline.layers import (
    ACTIVATIONS,
    affine_backward,
    affine_forward,
    batchnorm_backward,
    batchnorm_forward,
    dropout_backward,
    dropout_forward,
    elu_backward,
    elu_forward,
    leaky_relu_backward,
    leaky_relu_forward,
    maxout_backward,
    maxout_forward,
    prelu_backward,
    prelu_forward,
    relu_backward,
    relu_forward,
    sigmoid_forward,
    softmax_loss,
    tanh_forward,
)

N, H = 6, 8  # small shapes for the float64 gradient checks


def all_indices(x: np.ndarray) -> range:
    return range(x.size)


def projected(forward, dout):
    """Scalar sum(forward() * dout), whose gradient w.r.t. any input is backward(dout)."""
    return lambda _: float(np.sum(forward() * dout))


@pytest.fixture
def rng():
    return np.random.default_rng(231)


# ---- one gradient check per layer --------------------------------------------------------
#
# Each case: the layer's inputs, a forward(inputs) -> (out, cache), a backward(dout, cache) ->
# {input name: grad}, and for kinked layers the piece every output is on. The check projects
# the output on a random dout, so the scalar sum(out * dout) has exactly backward(dout) as its
# gradient, and compares with centred differences (h = 1e-5, float64, seed 231) on every
# coordinate. BOUND is the bound of pipeline.gradcheck: |a - n| <= 1e-7 max(|a|, |n|) plus
# twice the rounding noise eps |f| / h. Coordinates whose +-h step changes a piece are left
# out and counted; no bound is loosened for them.

BOUND = 1e-7


def _elementwise(name, forward, backward, piece=None):
    return (name, {"x": (N, H)}, lambda v: forward(v["x"]),
            lambda d, c: {"x": backward(d, c)}, piece)


def _bn(mode):
    def forward(v):
        running = (np.full(H, 0.3), np.full(H, 2.0))
        return batchnorm_forward(v["x"], v["gamma"], v["beta"], *running, mode)

    def backward(d, c):
        dx, dgamma, dbeta = batchnorm_backward(d, c)
        return {"x": dx, "gamma": dgamma, "beta": dbeta}

    return (f"batchnorm_{mode}", {"x": (N, H), "gamma": (H,), "beta": (H,)}, forward,
            backward, None)


def _dropout():
    def forward(v):
        return dropout_forward(v["x"], 0.5, "train", np.random.default_rng(7))

    return ("dropout_train", {"x": (N, H)}, forward,
            lambda d, c: {"x": dropout_backward(d, c)}, None)


LAYER_CASES = [
    ("affine", {"x": (N, 5), "W": (5, H), "b": (H,)},
     lambda v: affine_forward(v["x"], v["W"], v["b"]),
     lambda d, c: dict(zip(("x", "W", "b"), affine_backward(d, c))), None),
    _elementwise("sigmoid", *ACTIVATIONS["sigmoid"]),
    _elementwise("tanh", *ACTIVATIONS["tanh"]),
    _elementwise("relu", relu_forward, relu_backward, lambda c: c > 0),
    _elementwise("leaky_relu", lambda x: leaky_relu_forward(x, 0.1), leaky_relu_backward,
                 lambda c: c[0] > 0),
    _elementwise("elu", lambda x: elu_forward(x, 0.7), elu_backward, lambda c: c[0] > 0),
    ("prelu", {"x": (N, H), "alpha": (H,)}, lambda v: prelu_forward(v["x"], v["alpha"]),
     lambda d, c: dict(zip(("x", "alpha"), prelu_backward(d, c))), lambda c: c[0] > 0),
    ("maxout", {"x": (N, 3 * H)}, lambda v: maxout_forward(v["x"], 3),
     lambda d, c: {"x": maxout_backward(d, c)}, lambda c: c[1]),
    _bn("train"),
    _bn("test"),
    _dropout(),
]


@pytest.mark.parametrize("name, shapes, forward, backward, piece", LAYER_CASES,
                         ids=[case[0] for case in LAYER_CASES])
def test_layer_backward_matches_centred_differences(name, shapes, forward, backward, piece):
    rng = np.random.default_rng(231)
    inputs = {key: rng.standard_normal(shape) for key, shape in shapes.items()}
    out, cache = forward(inputs)
    dout = rng.standard_normal(out.shape)
    analytic = backward(dout, cache)

    def f() -> float:
        return float(np.sum(forward(inputs)[0] * dout))

    pieces = (lambda: [piece(forward(inputs)[1])]) if piece else None
    check = check_grads(f, inputs, analytic, rng, num_checks=10**6, pieces=pieces)

    assert {k: a.shape for k, a in analytic.items()} == shapes
    assert check.passed(BOUND), check.excess_error()
    # standard normal inputs sit far from the kinks next to h = 1e-5: nearly all are checked
    assert check.checked >= 0.95 * sum(int(np.prod(s)) for s in shapes.values())


@pytest.mark.parametrize("name, x, piece", [
    ("relu", np.array([[0.5e-5, 1.0]]), lambda x: relu_forward(x)[1] > 0),
    ("leaky_relu", np.array([[-0.5e-5, 1.0]]), lambda x: leaky_relu_forward(x)[1][0] > 0),
    ("prelu", np.array([[0.5e-5, -1.0]]),
     lambda x: prelu_forward(x, np.array([0.2, 0.2]))[1][0] > 0),
    ("maxout", np.array([[1.0, 2.0, 1.0 + 0.5e-5, 0.0]]), lambda x: maxout_forward(x)[1][1]),
])
def test_a_step_across_a_kink_is_detected_and_left_out(name, x, piece):
    # coordinate 0 sits h/2 from the kink (for maxout: piece 0 of unit 0 is h/2 below piece 1)
    forward = {"relu": relu_forward, "leaky_relu": leaky_relu_forward,
               "prelu": lambda v: prelu_forward(v, np.array([0.2, 0.2])),
               "maxout": maxout_forward}[name]
    dout = np.ones_like(forward(x)[0])
    check = check_grads(lambda: float(np.sum(forward(x)[0] * dout)), {"x": x},
                        {"x": np.zeros_like(x)}, np.random.default_rng(0),
                        num_checks=x.size, pieces=lambda: [piece(x)])

    # only coordinate 0 (and, for maxout, its rival piece 2) crosses
    assert check.kinks == (2 if name == "maxout" else 1)
    assert check.checked == x.size - check.kinks


def test_across_a_relu_kink_the_quotient_is_wrong_by_half():
    # why kinks are left out: the centred quotient there averages the two pieces
    x = np.array([0.5e-5])
    numeric = numeric_grad(lambda v: float(relu_forward(v)[0].sum()), x, [0], h=1e-5)

    assert numeric[0] == pytest.approx(0.75, rel=1e-6)  # 1 on one side, 0 on 1/4 of the step
    assert relu_backward(np.ones(1), x)[0] == 1.0


# ---- values ---------------------------------------------------------------------------------

def test_affine_forward_known_values():
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    W = np.array([[1.0, 0.0, -1.0], [0.5, 2.0, 1.0]])
    b = np.array([0.1, 0.2, 0.3])

    out, _ = affine_forward(x, W, b)

    np.testing.assert_array_equal(out, [[2.1, 4.2, 1.3], [5.1, 8.2, 1.3]])


def test_affine_backward_matches_numeric(rng):
    x = rng.standard_normal((4, 5))
    W = rng.standard_normal((5, 3))
    b = rng.standard_normal(3)
    dout = rng.standard_normal((4, 3))
    _, cache = affine_forward(x, W, b)

    dx, dW, db = affine_backward(dout, cache)
    f = projected(lambda: affine_forward(x, W, b)[0], dout)
    # f is linear in each input: no truncation error, and a larger h shrinks the rounding error
    h = 1e-3

    assert dx.shape == x.shape and dW.shape == W.shape and db.shape == b.shape
    assert rel_error(dx, numeric_grad(f, x, all_indices(x), h).reshape(x.shape)).max() < 1e-10
    assert rel_error(dW, numeric_grad(f, W, all_indices(W), h).reshape(W.shape)).max() < 1e-10
    assert rel_error(db, numeric_grad(f, b, all_indices(b), h)).max() < 1e-10


def test_relu_and_leaky_relu_known_values():
    x = np.array([[-2.0, 0.0, 3.0]])

    np.testing.assert_array_equal(relu_forward(x)[0], [[0.0, 0.0, 3.0]])
    np.testing.assert_array_equal(leaky_relu_forward(x)[0], [[-0.02, 0.0, 3.0]])  # 0.01
    np.testing.assert_array_equal(leaky_relu_forward(x, slope=0.2)[0], [[-0.4, 0.0, 3.0]])
    dx = leaky_relu_backward(np.full((1, 3), 2.0), leaky_relu_forward(x, slope=0.2)[1])
    np.testing.assert_array_equal(dx, [[0.4, 0.4, 2.0]])  # the kink at 0 takes the left side


def test_sigmoid_and_tanh_known_values():
    x = np.array([-1.0, 0.0, 2.0])

    np.testing.assert_allclose(sigmoid_forward(x)[0], [0.2689414213699951, 0.5,
                                                       0.8807970779778823], rtol=1e-15)
    np.testing.assert_allclose(tanh_forward(x)[0], np.tanh(x), rtol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_and_elu_do_not_overflow_for_large_inputs(dtype):
    x = np.array([-1e4, -100.0, -30.0, 0.0, 30.0, 1e4], dtype=dtype)

    # an overflow or invalid operation fails the test; exp(-1e4) underflowing to 0 is right
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        s, _ = sigmoid_forward(x)
        e, _ = elu_forward(x, alpha=1.5)

    tiny = math.exp(-30) / (1 + math.exp(-30))
    assert s.dtype == e.dtype == dtype
    # float32 holds exp(-100) = 3.7e-44 as a subnormal only, to ~1e-45
    np.testing.assert_allclose(s, [0.0, math.exp(-100), tiny, 0.5, 1 - tiny, 1.0],
                               rtol=1e-6, atol=0 if dtype is np.float64 else 1e-44)
    np.testing.assert_allclose(e, [-1.5, -1.5, -1.5 * (1 - math.exp(-30)), 0.0, 30.0, 1e4],
                               rtol=1e-6)


def test_elu_is_accurate_near_zero():
    # expm1: alpha (exp(x) - 1) for x = -1e-10 is -alpha 1e-10 to full precision
    out, _ = elu_forward(np.array([-1e-10]), alpha=2.0)

    assert out[0] == pytest.approx(-2e-10, rel=1e-9)


def test_prelu_learns_one_slope_per_unit():
    x = np.array([[-1.0, 2.0], [-3.0, -4.0]])
    alpha = np.array([0.1, 0.5])

    out, cache = prelu_forward(x, alpha)
    dx, dalpha = prelu_backward(np.ones_like(x), cache)

    np.testing.assert_allclose(out, [[-0.1, 2.0], [-0.3, -2.0]], rtol=1e-15)
    np.testing.assert_allclose(dx, [[0.1, 1.0], [0.1, 0.5]], rtol=1e-15)
    np.testing.assert_allclose(dalpha, [-4.0, -4.0], rtol=1e-15)  # sum of x where x <= 0


def test_maxout_takes_the_max_of_k_pieces_per_unit():
    # 2 units, 3 pieces: piece p of unit j is column p * 2 + j
    x = np.array([[1.0, -5.0, 4.0, -1.0, 2.0, -3.0]])

    out, cache = maxout_forward(x, pieces=3)
    dx = maxout_backward(np.array([[10.0, 20.0]]), cache)

    np.testing.assert_array_equal(out, [[4.0, -1.0]])
    np.testing.assert_array_equal(dx, [[0.0, 0.0, 10.0, 20.0, 0.0, 0.0]])


def test_maxout_sends_a_tie_to_one_piece_only():
    out, cache = maxout_forward(np.array([[3.0, 3.0]]), pieces=2)

    dx = maxout_backward(np.array([[1.0]]), cache)

    assert out[0, 0] == 3.0
    assert dx.sum() == 1.0


def test_maxout_refuses_a_width_that_is_not_k_pieces():
    with pytest.raises(ValueError, match="5 inputs are not 2 pieces"):
        maxout_forward(np.zeros((1, 5)), pieces=2)


def test_batchnorm_train_gives_zero_mean_unit_variance_per_unit(rng):
    x = (5.0 + 3.0 * rng.standard_normal((200, 4))).astype(np.float32)
    x[:, 1] *= 100  # units of very different scales come out alike
    running_mean, running_var = np.zeros(4, np.float32), np.ones(4, np.float32)

    out, _ = batchnorm_forward(x, np.ones(4, np.float32), np.zeros(4, np.float32),
                               running_mean, running_var, "train", momentum=0.9, eps=1e-5)

    assert out.dtype == np.float32
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(out.var(axis=0), 1.0, rtol=1e-4)  # var / (var + eps) ~ 1
    # one step of the running averages: 0.9 * start + 0.1 * batch statistic
    np.testing.assert_allclose(running_mean, 0.1 * x.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(running_var, 0.9 + 0.1 * x.var(axis=0), rtol=1e-5)


def test_batchnorm_scale_and_shift_set_the_std_and_mean(rng):
    x = rng.standard_normal((500, 3))
    gamma, beta = np.array([2.0, 0.5, 1.0]), np.array([-1.0, 3.0, 0.0])

    out, _ = batchnorm_forward(x, gamma, beta, np.zeros(3), np.ones(3), "train", eps=0.0)

    np.testing.assert_allclose(out.mean(axis=0), beta, atol=1e-12)
    np.testing.assert_allclose(out.std(axis=0), gamma, rtol=1e-12)


def test_batchnorm_test_mode_uses_the_running_averages_and_leaves_them(rng):
    x = rng.standard_normal((5, 2))
    running_mean, running_var = np.array([1.0, -1.0]), np.array([4.0, 0.25])

    out, _ = batchnorm_forward(x, np.ones(2), np.zeros(2), running_mean, running_var, "test",
                               eps=0.0)

    np.testing.assert_allclose(out, (x - [1.0, -1.0]) / [2.0, 0.5], rtol=1e-15)
    np.testing.assert_array_equal(running_mean, [1.0, -1.0])
    np.testing.assert_array_equal(running_var, [4.0, 0.25])


def test_dropout_zeroes_a_share_p_and_rescales_the_rest():
    x = np.ones((1000, 100), dtype=np.float32)

    out, mask = dropout_forward(x, 0.3, "train", np.random.default_rng(0))
    again, _ = dropout_forward(x, 0.3, "train", np.random.default_rng(0))

    dropped = np.mean(out == 0)
    assert out.dtype == np.float32
    assert abs(dropped - 0.3) < 0.005  # 1e5 draws: std of the share 0.0015
    np.testing.assert_allclose(out[out != 0], 1 / 0.7, rtol=1e-6)
    assert abs(out.mean() - 1.0) < 0.01  # inverted dropout keeps the expectation
    np.testing.assert_array_equal(out, again)  # one seed, one mask
    np.testing.assert_array_equal(dropout_backward(x, mask), out)


def test_dropout_is_the_identity_at_test_time_and_needs_a_generator_in_training():
    x = np.arange(6.0).reshape(2, 3)

    out, cache = dropout_forward(x, 0.5, "test")

    assert out is x and cache is None
    with pytest.raises(ValueError, match="Generator"):
        dropout_forward(x, 0.5, "train")


# ---- softmax ---------------------------------------------------------------------------------

def test_softmax_loss_backward_matches_numeric(rng):
    scores = rng.standard_normal((4, 5))
    y = np.array([0, 4, 2, 2])

    _, dscores = softmax_loss(scores, y)
    numeric = numeric_grad(lambda s: softmax_loss(s, y)[0], scores, all_indices(scores))

    assert rel_error(dscores, numeric.reshape(scores.shape)).max() < 1e-7


def test_softmax_loss_uniform_scores_is_log_num_classes():
    N, C = 6, 10
    y = np.arange(N)

    loss, dscores = softmax_loss(np.zeros((N, C)), y)

    assert loss == pytest.approx(math.log(C), rel=1e-15)
    expected = np.full((N, C), 1 / C)
    expected[np.arange(N), y] -= 1
    np.testing.assert_allclose(dscores, expected / N, rtol=1e-15, atol=1e-17)


def test_softmax_loss_hand_computed_2x3():
    scores = np.array([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]])
    y = np.array([2, 0])

    loss, dscores = softmax_loss(scores, y)

    # row 0: -log(e^3 / (e + e^2 + e^3)) = log(1 + e^-1 + e^-2); row 1: log 3
    row0 = math.log(1 + math.exp(-1) + math.exp(-2))
    assert row0 == pytest.approx(0.40760596444438, rel=1e-13)
    assert loss == pytest.approx((row0 + math.log(3)) / 2, rel=1e-15)
    p0 = np.exp([1.0, 2.0, 3.0]) / np.exp([1.0, 2.0, 3.0]).sum()
    expected = np.array([p0 - [0, 0, 1], [1 / 3 - 1, 1 / 3, 1 / 3]]) / 2
    np.testing.assert_allclose(dscores, expected, rtol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_loss_is_stable_for_huge_scores(dtype):
    scores = np.array([[1e4, 0.0, -1e4], [1e4, 0.0, -1e4]], dtype=dtype)
    y = np.array([0, 1])

    loss, dscores = softmax_loss(scores, y)

    # row 0 is certain and right (loss 0), row 1 misses by 1e4 (loss 1e4)
    assert loss == pytest.approx(5e3, rel=1e-7)
    assert np.all(np.isfinite(dscores))
    np.testing.assert_allclose(dscores, [[0.0, 0.0, 0.0], [0.5, -0.5, 0.0]], atol=1e-7)


def test_softmax_loss_keeps_float32():
    scores = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)

    loss, dscores = softmax_loss(scores, np.array([0, 1, 3]))

    assert type(loss) is float
    assert dscores.dtype == np.float32


# ---- dtypes, registry, helpers ----------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activations_keep_dtype(name, dtype):
    forward, backward = ACTIVATIONS[name]
    x = np.random.default_rng(1).standard_normal((4, 5)).astype(dtype)

    out, cache = forward(x)
    dx = backward(np.ones_like(out), cache)

    assert out.dtype == dx.dtype == dtype
    assert out.shape == dx.shape == x.shape


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layers_with_params_keep_dtype(dtype):
    rng = np.random.default_rng(1)
    x, W, b = (rng.standard_normal(s).astype(dtype) for s in [(4, 6), (6, 6), (6,)])
    ones, zeros = np.ones(6, dtype), np.zeros(6, dtype)

    out, affine_cache = affine_forward(x, W, b)
    normed, bn_cache = batchnorm_forward(out, ones, zeros, zeros.copy(), ones.copy(), "train")
    slopes, prelu_cache = prelu_forward(normed, ones * dtype(0.25))
    maxed, maxout_cache = maxout_forward(slopes, 2)
    dropped, drop_cache = dropout_forward(maxed, 0.5, "train", rng)
    grads = [*affine_backward(np.ones_like(out), affine_cache),
             *batchnorm_backward(np.ones_like(normed), bn_cache),
             *prelu_backward(np.ones_like(slopes), prelu_cache),
             maxout_backward(np.ones_like(maxed), maxout_cache),
             dropout_backward(np.ones_like(dropped), drop_cache)]

    assert {a.dtype for a in (out, normed, slopes, maxed, dropped, *grads)} == {np.dtype(dtype)}


def test_activations_registry_holds_the_elementwise_ones():
    assert sorted(ACTIVATIONS) == ["elu", "leaky_relu", "relu", "sigmoid", "tanh"]
    assert ACTIVATIONS["relu"] == (relu_forward, relu_backward)


def test_numeric_grad_restores_input_and_is_exact_on_a_quadratic():
    x = np.array([1.0, -2.0, 3.0])

    grad = numeric_grad(lambda v: float(np.sum(v**2)), x, [0, 2])

    np.testing.assert_array_equal(x, [1.0, -2.0, 3.0])
    np.testing.assert_allclose(grad, [2.0, 6.0], rtol=1e-10)


def test_rel_error_is_zero_where_both_are_zero():
    errors = rel_error(np.array([0.0, 1.0, -2.0]), np.array([0.0, 1.5, 2.0]))

    np.testing.assert_allclose(errors, [0.0, 0.5 / 1.5, 2.0])
