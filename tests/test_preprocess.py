import numpy as np
import pytest

from pipeline.config import Mode
from pipeline.preprocess import apply, split, statistics


def images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def test_mean_image_statistics_are_per_pixel():
    X = images(7000)  # more than one accumulation chunk
    mean, std = statistics(X, Mode.mean_image)

    assert mean.shape == (32, 32, 3) and std.shape == (32, 32, 3)
    np.testing.assert_allclose(mean, X.astype(np.float64).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, X.astype(np.float64).std(axis=0), rtol=1e-9)


def test_per_channel_statistics_have_three_values():
    X = images(300)
    X[..., 0] = 10
    mean, std = statistics(X, Mode.per_channel)

    assert mean.shape == (3,)
    assert mean[0] == 10.0 and std[0] == 0.0
    np.testing.assert_allclose(mean, X.reshape(-1, 3).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, X.reshape(-1, 3).astype(np.float64).std(axis=0), rtol=1e-9)


@pytest.mark.parametrize("mode", list(Mode))
def test_centred_training_data_has_zero_mean(mode):
    X = images(500)
    mean, std = statistics(X, mode)

    out = apply(X, mean, std)
    assert out.dtype == np.float32 and out.shape == (500, 3072)
    per_feature = out.mean(axis=0)
    if mode == Mode.mean_image:
        assert np.abs(per_feature).max() < 1e-4
        np.testing.assert_allclose(out.std(axis=0), 1.0, rtol=1e-4)
    else:
        channel_means = out.reshape(500, 32, 32, 3).mean(axis=(0, 1, 2))
        assert np.abs(channel_means).max() < 1e-4


def test_val_and_test_use_training_statistics():
    """A shifted val set stays shifted: it is centred with the training mean, not its own."""
    X_train = images(200, seed=1) // 2            # values 0..127
    X_val = X_train[:50] + 100                    # the same images, brighter
    mean, _ = statistics(X_train, Mode.per_channel)

    val = apply(X_val, mean, None)
    np.testing.assert_allclose(val.mean(), 100 + X_train[:50].mean() - mean.mean(), rtol=1e-5)


def test_split_takes_val_right_after_train():
    X = np.arange(100).reshape(100, 1)
    y = np.arange(100)
    parts = split(X, y, X[:20], y[:20], num_train=70, num_val=10, num_test=20)

    assert parts["train"][1].tolist() == list(range(70))
    assert parts["val"][1].tolist() == list(range(70, 80))
    assert len(parts["test"][1]) == 20


def test_split_larger_than_the_archive_names_the_keys():
    X, y = np.zeros((100, 1)), np.zeros(100)
    with pytest.raises(ValueError, match="data.num_train \\+ data.num_val = 101"):
        split(X, y, X, y, num_train=100, num_val=1, num_test=10)
