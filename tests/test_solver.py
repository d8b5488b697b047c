import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from conftest import ROOT

from pipeline import config, net, optim, sanity, solver, train

# Three well separated Gaussian blobs in 20-D: any working net and update rule learns them.
D, C = 20, 3


def blobs(rng, N):
    centres = 5.0 * np.eye(C, D)
    y = rng.integers(0, C, N)
    return (centres[y] + rng.standard_normal((N, D))).astype(np.float32), y


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return (*blobs(rng, 600), *blobs(rng, 200))


def spec_for(**kw) -> net.NetSpec:
    return net.NetSpec(input_dim=D, hidden_dims=(16, 16), num_classes=C, init="he", **kw)


def fit(data, spec, schedule, seed=1, **kw):
    params = net.init_params(spec, np.random.default_rng(seed))
    history = solver.train(params, spec, *data, schedule, np.random.default_rng(seed + 1),
                           **kw)
    return params, history


LRS = {"sgd": 0.05, "sgd_momentum": 0.02, "nesterov": 0.02, "adam": 3e-3}


@pytest.mark.parametrize("rule", sorted(optim.UPDATE_RULES))
@pytest.mark.parametrize("batchnorm", [False, True])
def test_every_update_rule_learns_the_blobs(data, rule, batchnorm):
    schedule = solver.Schedule(lr=LRS[rule], reg=1e-3, epochs=4, batch_size=50,
                               update_rule=rule, lr_decay=0.9)

    _, history = fit(data, spec_for(batchnorm=batchnorm), schedule)

    assert not history.diverged
    assert np.mean(history.loss[-12:]) < 0.5 * history.loss[0]
    assert history.best_val_acc >= 0.95


def test_schedule_passes_each_rule_its_own_hyperparameters():
    base = dict(lr=1e-3, reg=0.0, epochs=1, momentum=0.5, beta1=0.8, beta2=0.99, eps=1e-6)

    assert solver.Schedule(**base, update_rule="sgd").hyper() == {}
    assert solver.Schedule(**base, update_rule="sgd_momentum").hyper() == {"momentum": 0.5}
    assert solver.Schedule(**base, update_rule="nesterov").hyper() == {"momentum": 0.5}
    assert solver.Schedule(**base, update_rule="adam").hyper() == {
        "beta1": 0.8, "beta2": 0.99, "eps": 1e-6}


def test_lr_decays_once_per_epoch_and_ratios_are_per_weight_matrix(data):
    seen = []
    schedule = solver.Schedule(lr=0.01, reg=0.0, epochs=3, batch_size=100, lr_decay=0.5)

    _, history = fit(data, spec_for(batchnorm=True), schedule,
                     on_epoch=lambda epoch, m: seen.append((m["lr"], sorted(m["ratios"]))))

    assert seen == [(0.01, ["W1", "W2", "W3"]), (0.005, ["W1", "W2", "W3"]),
                    (0.0025, ["W1", "W2", "W3"])]
    assert len(history.ratios["W1"]) == 3 * 6
    assert all(0 < r < 1 for r in history.ratios["W2"])


def test_a_huge_lr_is_caught_as_divergence(data):
    schedule = solver.Schedule(lr=1e6, reg=0.0, epochs=5, batch_size=50)

    _, history = fit(data, spec_for(), schedule)

    assert history.diverged and history.diverged_at < 20
    assert history.val_acc == [] and history.best_params is None


def test_batchnorm_state_moves_in_training_and_the_best_is_a_copy(data):
    spec = spec_for(batchnorm=True)
    state = net.init_state(spec)
    schedule = solver.Schedule(lr=0.02, reg=1e-3, epochs=2, batch_size=50)

    params, history = fit(data, spec, schedule, state=state)

    X_val, y_val = data[2], data[3]
    assert state["running_var1"].max() != 1.0  # moved in place
    assert history.best_state.keys() == state.keys()
    assert all(history.best_state[k] is not state[k] for k in state)
    best = net.accuracy(history.best_params, X_val, y_val, spec, state=history.best_state)
    assert best == history.best_val_acc


def test_dropout_runs_repeat_under_one_seed_and_differ_under_another(data):
    spec = spec_for(dropout=0.3)
    schedule = solver.Schedule(lr=0.02, reg=0.0, epochs=1, batch_size=50)

    first = fit(data, spec, schedule, seed=1)[1].loss
    again = fit(data, spec, schedule, seed=1)[1].loss
    other = fit(data, spec, schedule, seed=3)[1].loss

    assert first == again
    assert first != other


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_the_generator_only_shuffles_with_or_without_dropout(data, dropout):
    spec = spec_for(dropout=dropout)
    schedule = solver.Schedule(lr=0.02, reg=0.0, epochs=2, batch_size=50)
    rng, twin = np.random.default_rng(5), np.random.default_rng(5)

    solver.train(net.init_params(spec, np.random.default_rng(0)), spec, *data, schedule, rng)
    for _ in range(2):
        twin.permutation(600)

    # the exact draws of the loop before dropout existed: masks come from a spawned stream,
    # so switching dropout on changes no shuffle
    assert rng.random() == twin.random()


def test_last_layer_only_leaves_the_rest_untouched(data):
    spec = spec_for(batchnorm=True, dropout=0.2)
    params = net.init_params(spec, np.random.default_rng(1))
    state = net.init_state(spec)
    state["running_mean1"] += 0.1
    before = {k: v.copy() for k, v in params.items()}
    state_before = {k: v.copy() for k, v in state.items()}
    schedule = solver.Schedule(lr=0.05, reg=1e-3, epochs=3, batch_size=50)

    history = solver.train(params, spec, *data, schedule, np.random.default_rng(2),
                           state=state, train_from=3)

    for name in params:
        moved = not np.array_equal(params[name], before[name])
        assert moved == (name in ("W3", "b3")), name
    for name in state:  # frozen layers run in test mode: their averages stay
        np.testing.assert_array_equal(state[name], state_before[name])
    assert set(history.ratios["W1"]) == {0.0} and min(history.ratios["W3"]) > 0
    assert history.best_val_acc > 0.8  # random features of separable blobs still separate


# ---- checkpoints and fine-tuning (pipeline.train) ---------------------------------------------

def test_checkpoint_keeps_params_state_and_spec_apart(tmp_path):
    spec = spec_for(batchnorm=True, activation="prelu")
    params, state = net.init_params(spec, np.random.default_rng(0)), net.init_state(spec)
    state["running_var2"] *= 3.0
    path = tmp_path / "best.npz"

    train.save_checkpoint(params, spec, path, state=state)
    loaded, loaded_state, loaded_spec = train.load_model(path)
    plain, plain_spec = train.load_checkpoint(path)

    assert loaded_spec == plain_spec == spec
    assert loaded.keys() == plain.keys() == params.keys()
    assert loaded_state.keys() == state.keys()
    np.testing.assert_array_equal(loaded_state["running_var2"], 3.0)
    np.testing.assert_array_equal(loaded["alpha1"], params["alpha1"])


def finetune_config(*overrides):
    return config.load(ROOT / "params.yaml", [
        "model.hidden_dims=[16,16]", "model.init=he", "model.batchnorm=true", *overrides])


def test_fine_tuning_starts_from_the_checkpoint(tmp_path):
    cfg = finetune_config(f"finetune.checkpoint={tmp_path / 'pre.npz'}",
                          "finetune.last_layer_only=true", "model.dropout=0.5")
    pretrained = spec_for(batchnorm=True)
    spec = replace(pretrained, dropout=0.5)  # dropout shapes training only: same architecture
    params, state = net.init_params(pretrained, np.random.default_rng(9)), net.init_state(spec)
    state["running_mean1"] += 1.0
    train.save_checkpoint(params, pretrained, tmp_path / "pre.npz", state=state)

    start, start_state, train_from, source = train.starting_point(cfg, spec)

    assert train_from == 3 and "pre.npz" in source
    assert all(np.array_equal(start[k], params[k]) for k in params)
    np.testing.assert_array_equal(start_state["running_mean1"], 1.0)


def test_fine_tuning_refuses_another_architecture_or_a_missing_file(tmp_path):
    cfg = finetune_config(f"finetune.checkpoint={tmp_path / 'pre.npz'}")
    other = net.NetSpec(input_dim=D, hidden_dims=(16, 8), num_classes=C, batchnorm=True)
    spec = spec_for(batchnorm=True)

    with pytest.raises(SystemExit, match="is missing"):
        train.starting_point(cfg, spec)
    train.save_checkpoint(net.init_params(other, np.random.default_rng(0)), other,
                          tmp_path / "pre.npz", state=net.init_state(other))
    with pytest.raises(SystemExit, match=r"hidden_dims: \(16, 8\) -> \(16, 16\)"):
        train.starting_point(cfg, spec)


def test_without_a_checkpoint_training_starts_from_the_init(tmp_path):
    cfg = finetune_config()
    spec = spec_for(batchnorm=True)

    params, state, train_from, source = train.starting_point(cfg, spec)

    assert train_from == 1 and source == "init he"
    expected = net.init_params(spec, np.random.default_rng([cfg.seed, 3, 0]))
    assert all(np.array_equal(params[k], expected[k]) for k in expected)
    assert state.keys() == net.init_state(spec).keys()


def test_last_layer_only_needs_a_checkpoint():
    with pytest.raises(config.ConfigError, match="finetune.last_layer_only"):
        config.load(ROOT / "params.yaml", ["finetune.last_layer_only=true"])


# ---- the sanity stage on every kind of net -----------------------------------------------------

# A gaussian init of std 0.03 keeps the scores small, so the first loss is ln 10 (Xavier or
# He scores have std ~1: a first loss near 2.8, which the initial-loss check rightly flags),
# and the weights large enough that h = 1e-5 is a small step for BN's scale-free layers.
@pytest.mark.parametrize("overrides", [
    ["model.activation=maxout", "model.batchnorm=true"],
    ["model.activation=prelu", "model.dropout=0.3"],
    ["model.activation=tanh"],
    ["model.activation=elu", "model.batchnorm=true"],
])
def test_sanity_checks_pass_for_other_nets(overrides):
    cfg = config.load(ROOT / "params.yaml", ["model.hidden_dims=[30,20]", "model.init=gaussian",
                                             "model.weight_scale=0.03", *overrides])
    rng = np.random.default_rng(0)
    X = rng.standard_normal((100, 3072)).astype(np.float32)  # scaled like preprocessed data
    y = rng.integers(0, 10, 100)

    report = sanity.run_checks(cfg, X, y)

    assert report["passed"], report["checks"]
    assert report["checks"]["gradient_reg"]["checked"] > 100


# ---- the benchmark runs -------------------------------------------------------------------------

def test_benchmark_prints_a_figure_per_net():
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.train_step", "--no-torch", "--threads", "1",
         "--rounds", "1", "--seconds", "0.05", "--net", "3072-50-10"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    line = next(row for row in done.stdout.splitlines() if row.startswith("3072-50-10"))
    fields = line.split()
    assert fields[1] == "1"  # threads
    assert float(fields[2].replace(",", "")) > 1000  # images/s of the product's own step
    assert fields[5].endswith("%")  # share of the GEMM floor
