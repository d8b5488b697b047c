import math

import numpy as np
import pytest

from pipeline.gradcheck import numeric_grad, rel_error
from pipeline.layers import (
    ACTIVATIONS,
    affine_backward,
    affine_forward,
    relu_backward,
    relu_forward,
    softmax_loss,
)


def all_indices(x: np.ndarray) -> range:
    return range(x.size)


def projected(forward, dout):
    """Scalar sum(forward() * dout), whose gradient w.r.t. any input is backward(dout)."""
    return lambda _: float(np.sum(forward() * dout))


@pytest.fixture
def rng():
    return np.random.default_rng(231)


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


def test_relu_forward_known_values():
    out, _ = relu_forward(np.array([[-2.0, 0.0, 3.0]]))

    np.testing.assert_array_equal(out, [[0.0, 0.0, 3.0]])


def test_relu_backward_matches_numeric(rng):
    # |x| >= 0.1 keeps the +-1e-3 steps off the kink; on either side f is linear in x
    x = rng.choice([-1.0, 1.0], size=(4, 5)) * rng.uniform(0.1, 1.0, size=(4, 5))
    dout = rng.standard_normal((4, 5))
    _, cache = relu_forward(x)

    dx = relu_backward(dout, cache)
    f = projected(lambda: relu_forward(x)[0], dout)
    numeric = numeric_grad(f, x, all_indices(x), h=1e-3)

    assert rel_error(dx, numeric.reshape(x.shape)).max() < 1e-10
    np.testing.assert_array_equal(dx[x < 0], 0.0)


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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layers_keep_dtype(dtype):
    rng = np.random.default_rng(1)
    x, W, b = (rng.standard_normal(s).astype(dtype) for s in [(4, 5), (5, 3), (3,)])

    out, affine_cache = affine_forward(x, W, b)
    hidden, relu_cache = relu_forward(out)
    grads = affine_backward(relu_backward(np.ones_like(hidden), relu_cache), affine_cache)

    assert out.dtype == hidden.dtype == dtype
    assert [g.dtype for g in grads] == [dtype] * 3


def test_activations_registry_pairs_forward_and_backward():
    assert ACTIVATIONS["relu"] == (relu_forward, relu_backward)


def test_numeric_grad_restores_input_and_is_exact_on_a_quadratic():
    x = np.array([1.0, -2.0, 3.0])

    grad = numeric_grad(lambda v: float(np.sum(v**2)), x, [0, 2])

    np.testing.assert_array_equal(x, [1.0, -2.0, 3.0])
    np.testing.assert_allclose(grad, [2.0, 6.0], rtol=1e-10)


def test_rel_error_is_zero_where_both_are_zero():
    errors = rel_error(np.array([0.0, 1.0, -2.0]), np.array([0.0, 1.5, 2.0]))

    np.testing.assert_allclose(errors, [0.0, 0.5 / 1.5, 2.0])
