"""The physics of the init study on small nets: collapse, saturation, He's factor 2, symmetry."""

import math
import re

import numpy as np
import pytest
from conftest import ROOT

from pipeline import config
from pipeline.net import NetSpec, init_params
from pipeline.studies import init_study
from pipeline.studies.layer_stats import layer_rows, saturated_fraction
from pipeline.studies.propagation import activation_of, distinct_units, study_spec, trace

DEPTH, WIDTH, N = 6, 100, 300


def measured(init: str, activation: str, seed: int = 0) -> list[dict]:
    """Per-layer rows of a DEPTH x WIDTH net fed N unit-Gaussian examples."""
    rng = np.random.default_rng(seed)
    spec = study_spec(NetSpec(input_dim=WIDTH, hidden_dims=(WIDTH,) * DEPTH, init=init,
                              weight_scale=0.01), activation)
    params = init_params(spec, rng, np.float64)
    X, y = rng.standard_normal((N, WIDTH)), rng.integers(0, 10, N)
    with np.errstate(over="ignore", under="ignore"):
        t = trace(params, X, y, activation_of(spec, activation))
    return layer_rows(t, params, activation, saturation=0.99)


def column(rows: list[dict], key: str) -> np.ndarray:
    return np.array([r[key] for r in rows])


@pytest.mark.parametrize("activation", ["tanh", "relu", "linear"])
def test_small_random_weights_collapse_the_activations(activation):
    std = column(measured("gaussian", activation), "act_std")

    # each layer scales the std by about sqrt(fan_in) * 0.01 = 0.1 (less for ReLU)
    assert std[-1] < 1e-3 * std[0]
    assert np.all(np.diff(np.log(std)) < 0)


def test_unit_gaussian_weights_saturate_tanh():
    rows = measured("unit_gaussian", "tanh")

    # pre-activations have std ~ sqrt(100) = 10, so |z| > 2.65 (|tanh| > 0.99) is typical
    assert column(rows, "saturated").min() > 0.7
    assert column(rows, "act_std").min() > 0.9
    assert column(measured("xavier", "tanh"), "saturated").max() < 0.05


def test_he_keeps_relu_activations_within_a_factor_of_a_few():
    std = column(measured("he", "relu"), "act_std")

    assert std.max() / std.min() < 2.0
    assert column(measured("xavier", "relu"), "act_std")[-1] < 0.3 * std[-1]


def test_xavier_argument_holds_for_linear_and_relu_halves_it():
    def ratio(activation):
        rows = measured("xavier", activation)[1:]  # layer 1 sees the zero-mean input itself
        return column(rows, "var_measured") / column(rows, "var_xavier")

    # per layer the ratio scatters by some 0.1 on 100 units; its mean is sharp
    assert ratio("linear").mean() == pytest.approx(1.0, abs=0.05)
    assert ratio("relu").mean() == pytest.approx(0.5, abs=0.05)
    assert np.all((ratio("relu") > 0.35) & (ratio("relu") < 0.7))
    # tanh compresses a unit-variance input to about 0.4 of its variance, and less and less
    # as the variance shrinks layer by layer: near 0, tanh(z) ~ z and Xavier holds again
    tanh = ratio("tanh")
    assert tanh[0] < 0.5 and tanh[-1] > 0.7
    assert np.all(np.diff(tanh) > 0)


@pytest.mark.parametrize("init, activation", [
    ("gaussian", "sigmoid"), ("unit_gaussian", "tanh"), ("xavier", "relu"), ("he", "elu"),
    ("he", "maxout"),
])
def test_product_rule_predicts_every_layer(init, activation):
    rows = measured(init, activation)

    ratio = column(rows, "var_measured") / column(rows, "var_product")
    assert np.all(np.abs(ratio - 1) < 0.2), ratio


def test_sigmoid_breaks_xavier_by_its_mean():
    rows = measured("gaussian", "sigmoid")[1:]

    # inputs of 0.5 on average: E[x^2] = 0.25 dominates a Var(z) that the small weights shrink
    assert np.all(column(rows, "var_measured") > 10 * column(rows, "var_xavier"))


def test_relu_has_inactive_outputs_but_tanh_has_none():
    relu, tanh = measured("he", "relu"), measured("xavier", "tanh")

    assert column(relu, "inactive") == pytest.approx(0.5, abs=0.05)
    assert column(tanh, "inactive").max() == 0.0
    assert column(tanh, "dead").max() == 0.0


def test_saturated_fraction_by_bounds():
    assert saturated_fraction(np.array([0.995, -0.999, 0.5, 0.0]), "tanh", 0.99) == 0.5
    assert saturated_fraction(np.array([0.999, 0.001, 0.5, 0.9]), "sigmoid", 0.99) == 0.5
    assert math.isnan(saturated_fraction(np.array([3.0]), "relu", 0.99))


def test_distinct_units_groups_the_pieces_of_a_maxout_unit():
    W = np.array([[1.0, 1.0, 2.0, 3.0]])  # pieces (1, 2) and (1, 3): two different units
    b = np.zeros(4)

    assert distinct_units(W, b, units=2) == 2
    assert distinct_units(W[:, [0, 1, 2, 2]], b, units=2) == 1
    assert distinct_units(W, b, units=4) == 3
    assert distinct_units(np.zeros((3, 5)), np.zeros(5), units=5) == 1


@pytest.mark.parametrize("activation", ["sigmoid", "relu", "maxout"])
def test_all_zero_units_stay_identical_after_updates(activation):
    s = config.InitStudyConfig(depth=3, width=20, zero_steps=3, zero_lr=1.0)
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((40, 20)), rng.integers(0, 10, 40)
    rows = {}
    for init in ("zeros", "gaussian"):
        spec = init_study.deep_spec(s, 20, init, activation)
        params = init_params(spec, np.random.default_rng(2), np.float64)
        rows[init] = [r for r in init_study._train_and_count(params, spec, X, y, s)
                      if r["step"] == 3]

    assert [r["distinct_units"] for r in rows["zeros"]] == [1, 1, 1]
    assert [r["distinct_units"] for r in rows["gaussian"]] == [20, 20, 20]
    if activation == "sigmoid":
        # sigmoid(0) = 0.5 feeds the top layers a gradient: they move, yet as one unit
        assert rows["zeros"][-1]["weight_norm"] > 0


def small_config(**init) -> config.Config:
    cfg = config.Config()
    cfg.study.init = config.InitStudyConfig(
        depth=3, width=30, input_dim=30, num_samples=60, cifar_images=0, bins=8,
        zero_steps=2, activations=["tanh", "relu"], **init)
    return cfg


def test_tables_are_identical_across_runs(tmp_path):
    """Same seed, same tables to the byte: DVC sees no change on a rerun."""
    texts = []
    for run in ("a", "b"):
        cfg = small_config()
        found = init_study.batches(cfg)
        results = init_study.measure(cfg, found, log=_Quiet())
        results.symmetry = init_study.symmetry(cfg, found[0])
        init_study.write_tables(tmp_path / run, results)
        texts.append({p.name: p.read_text() for p in sorted((tmp_path / run).rglob("*.csv"))})

    assert texts[0] == texts[1]
    assert set(texts[0]) == {"layers.csv", "histograms.csv", "symmetry.csv",
                             "log10_act_std.csv", "log10_grad_std.csv", "var_ratio.csv",
                             "saturated.csv"}
    header = texts[0]["log10_act_std.csv"].splitlines()[0]
    assert header == ("layer,gaussian_tanh,gaussian_relu,unit_gaussian_tanh,unit_gaussian_relu,"
                      "xavier_tanh,xavier_relu,he_tanh,he_relu")


def test_summary_keeps_first_and_last_std_and_worst_saturation():
    rows = [{"input": "gaussian", "init": "xavier", "activation": "tanh", "layer": layer,
             "act_std": std, "saturated": sat, "dead": 0.0}
            for layer, std, sat in ((1, 0.63, 0.01), (2, 0.5, 0.2), (3, 0.23, 0.0))]

    entry = init_study.summary(rows)["gaussian"]["xavier"]["tanh"]
    assert entry == {"std_first": 0.63, "std_last": 0.23, "saturated_max": 0.2,
                     "dead_max": 0.0}


@pytest.mark.parametrize("override, key", [
    (["study.init.activations=[swish]"], "study.init.activations[0]"),
    (["study.init.inits=[zeros]"], "study.init.inits"),
    (["study.init.saturation=1.5"], "study.init.saturation"),
    (["study.init.depth=0"], "study.init.depth"),
])
def test_bad_study_values_name_the_key(override, key):
    with pytest.raises(config.ConfigError, match=re.escape(key)):
        config.load(ROOT / "params.yaml", override)


class _Quiet:
    def info(self, *args):
        pass
