"""The diagnosis on synthetic curves of each shape the lecture shows."""

import numpy as np
import pytest

from pipeline.diagnose import diagnose, names

STEPS = 1000
t = np.arange(STEPS)


def noisy(curve, seed=0, scale=0.02):
    return curve + np.random.default_rng(seed).normal(0, scale, len(curve))


def healthy_loss():
    return noisy(2.3 * np.exp(-t / 250) + 1.0)


def found(findings):
    return {f.name for f in findings}


def test_healthy_curve_is_healthy():
    findings = diagnose(healthy_loss(), [0.3, 0.4, 0.45, 0.5], [0.3, 0.39, 0.44, 0.48],
                        {"W1": [1e-3] * STEPS})
    assert found(findings) == {"healthy"}


def test_explosion_is_lr_too_high():
    loss = np.concatenate([np.full(20, 2.3), np.geomspace(2.3, 1e6, 10), [np.inf]])
    findings = diagnose(loss)
    assert found(findings) == {"lr_too_high"}
    assert "exploded" in findings[0].message


def test_nan_is_lr_too_high():
    assert found(diagnose([2.3, 2.2, np.nan])) == {"lr_too_high"}


def test_early_plateau_is_lr_too_high():
    loss = noisy(np.where(t < 30, 3.0 - t * 0.02, 2.4))
    assert found(diagnose(loss)) == {"lr_too_high"}


def test_straight_line_is_lr_too_low():
    loss = noisy(2.3 - 0.5 * t / STEPS, scale=0.005)
    findings = diagnose(loss)
    assert found(findings) == {"lr_too_low"}
    assert "straight line" in findings[0].message


def test_barely_moving_is_lr_too_low():
    loss = noisy(np.full(STEPS, 2.3026), scale=0.001)
    assert found(diagnose(loss)) == {"lr_too_low"}


def test_flat_then_sudden_drop_is_bad_init():
    loss = noisy(np.where(t < 400, 2.3, 2.3 - 1.2 * (1 - np.exp(-(t - 400) / 30))), scale=0.01)
    findings = diagnose(loss)
    assert found(findings) == {"bad_init"}
    assert "flat for" in findings[0].message


def test_widening_gap_is_overfitting():
    train = np.linspace(0.4, 0.95, 20)
    val = np.concatenate([np.linspace(0.38, 0.5, 10), np.full(10, 0.49)])
    findings = diagnose(healthy_loss(), train, val)
    assert "overfitting" in found(findings)


def test_small_steady_gap_is_not_overfitting():
    train = np.linspace(0.4, 0.55, 20)
    assert "overfitting" not in found(diagnose(healthy_loss(), train, train - 0.03))


@pytest.mark.parametrize("ratio, expected", [(5e-2, "ratio_high_W2"), (1e-6, "ratio_low_W2")])
def test_update_ratio_out_of_band(ratio, expected):
    ratios = {"W1": [1e-3] * STEPS, "W2": [ratio] * STEPS}
    findings = diagnose(healthy_loss(), ratios=ratios)
    assert found(findings) == {expected}
    assert "healthy near 1e-3" in findings[0].message


def test_names_join_for_a_tag():
    assert names(diagnose([2.3, np.inf])) == "lr_too_high"
