"""Batch normalization against weight scale on small nets, and both studies run by DVC."""

import json

import mlflow
import numpy as np
import pytest
import yaml
from archive_fixtures import make_archive
from conftest import ROOT, run

from pipeline import config
from pipeline.archive import file_md5
from pipeline.studies import bn_study
from pipeline.studies.figures import short_diagnosis
from pipeline.studies.propagation import study_activations

D, CLASSES = 40, 10


def blobs(rng, N, means):
    """N points around 10 class means: separable, so any net that trains gets far above 0.1."""
    y = rng.integers(0, CLASSES, N)
    return (means[y] + 0.5 * rng.standard_normal((N, D))).astype(np.float32), y


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    means = rng.standard_normal((CLASSES, D))
    X_train, y_train = blobs(rng, 1000, means)
    X_val, y_val = blobs(rng, 300, means)
    return bn_study.Data(X_train, y_train, X_val, y_val)


def small_config(**bn) -> config.Config:
    cfg = config.Config()
    cfg.study.bn = config.BnStudyConfig(hidden_dims=[30] * 6, epochs=4, batch_size=50, **bn)
    return cfg


def trained(cfg, data, batchnorm: bool, scale: float) -> dict:
    return bn_study.train_run(cfg, bn_study.Run("scale", batchnorm, scale, cfg.study.bn.lr),
                              data).row


@pytest.mark.parametrize("scale", [1e-3, 1e-2])
def test_batchnorm_trains_where_the_plain_net_does_not(data, scale):
    cfg = small_config()

    plain, bn = trained(cfg, data, False, scale), trained(cfg, data, True, scale)

    # the plain net's signal shrinks by ~sqrt(30) * scale per layer: the loss stays at ln 10
    assert plain["val_acc"] < 0.2
    assert abs(plain["train_loss"] - np.log(10)) < 0.01
    assert bn["val_acc"] > 0.5
    assert "lr_too_low" in plain["diagnosis"]


def test_both_train_at_a_sensible_scale(data):
    cfg = small_config()

    assert trained(cfg, data, False, 0.3)["val_acc"] > 0.8
    assert trained(cfg, data, True, 0.3)["val_acc"] > 0.8


def test_planned_runs_sweep_a_log_range_in_pairs():
    s = config.BnStudyConfig(weight_scales=[1e-4, 1e0], num_scales=5, lrs=[1e-3, 1e-1])

    runs = bn_study.planned_runs(s)

    scales = [r.weight_scale for r in runs if r.sweep == "scale"]
    assert scales[::2] == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    assert [r.batchnorm for r in runs] == [False, True] * 7
    assert [(r.lr, r.weight_scale) for r in runs if r.sweep == "lr"] == \
        [(1e-3, s.lr_weight_scale)] * 2 + [(1e-1, s.lr_weight_scale)] * 2


def test_a_run_shared_by_both_sweeps_is_trained_once(monkeypatch):
    cfg = small_config(weight_scales=[1e-2, 1e-1], num_scales=2, lr=1e-3, lrs=[1e-3, 1e-2],
                       lr_weight_scale=0.1)
    trained_runs = []

    def fake_train(cfg, run, data):
        trained_runs.append(run)
        return bn_study.Outcome({"sweep": run.sweep, "val_acc": 0.5, "train_acc": 0.5,
                                 "train_loss": 1.0, "diagnosis": "healthy"}, [], [], [], 0, 0)

    monkeypatch.setattr(bn_study, "train_run", fake_train)
    outcomes = bn_study.train_all(cfg, bn_study.planned_runs(cfg.study.bn), None, _Quiet())

    assert len(outcomes) == 8 and len(trained_runs) == 6
    assert [o.row["sweep"] for o in outcomes] == ["scale"] * 4 + ["lr"] * 4


def test_summary_counts_the_settings_that_trained():
    rows = [{"sweep": "scale", "batchnorm": bn, "weight_scale": scale, "lr": 1e-3,
             "val_acc": acc} for bn, scale, acc in
            ((False, 1e-3, 0.1), (False, 1e-1, 0.4), (True, 1e-3, 0.3), (True, 1e-1, 0.35))]

    found = bn_study.summary(rows)["scale"]

    assert found["plain"] == {"trained": 1, "of": 2, "trained_low": 1e-1, "trained_high": 1e-1,
                              "best_val_acc": 0.4}
    assert found["bn"]["trained"] == 2 and found["bn"]["trained_low"] == 1e-3


def test_short_diagnosis_counts_ratio_findings_per_kind():
    names = "lr_too_low,ratio_low_W1,ratio_low_W2,ratio_high_W10"

    assert short_diagnosis(names) == "lr_too_low, ratio_low (2 layers), ratio_high (1 layer)"


STUDY_TINY = [
    "data.num_train=400", "data.num_val=100", "data.num_test=100",
    "study.init.depth=3", "study.init.width=20", "study.init.input_dim=20",
    "study.init.num_samples=50", "study.init.cifar_images=20", "study.init.bins=6",
    "study.init.zero_steps=2", "study.init.activations=[tanh,relu]",
    "study.bn.hidden_dims=[20,20,20]", "study.bn.num_train=200", "study.bn.num_scales=3",
    "study.bn.weight_scales=[1e-3,1e-1]", "study.bn.epochs=2", "study.bn.batch_size=50",
    "study.bn.lrs=[1e-3,1e-2]", "study.bn.lr_weight_scale=0.1",
]


def test_dvc_repro_runs_both_studies_and_logs_figures(tmp_path, make_repo):
    source = tmp_path / "mirror"
    source.mkdir()
    archive = source / "cifar-10-python.tar.gz"
    make_archive(archive, n_per_batch=100, seed=3)
    repo = make_repo(source, STUDY_TINY + [f"+data.md5.tiny={file_md5(archive)}"])

    run(["dvc", "repro", "init_study", "bn_study"], repo)

    layers = (repo / "results/init_study/layers.csv").read_text().splitlines()
    assert len(layers) == 1 + 2 * 4 * 2 * 3  # inputs x inits x activations x layers
    figures = {p.name for p in (repo / "results/init_study/figures").glob("*.png")}
    assert {"gaussian_tanh_histograms.png", "cifar10_relu_layers.png", "gaussian_variance.png",
            "zero_init_symmetry.png"} <= figures
    runs = (repo / "results/bn_study/runs.csv").read_text().splitlines()
    assert len(runs) == 1 + 2 * 3 + 2 * 2
    metrics = json.loads((repo / "results/bn_study/metrics.json").read_text())
    assert metrics["scale"]["bn"]["of"] == 3

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    found = mlflow.search_runs(experiment_names=["cifar10-babysitting"])
    client = mlflow.tracking.MlflowClient()
    for stage, figure in (("init_study", "init_study/figures/gaussian_variance.png"),
                          ("bn_study", "bn_study/figures/accuracy_vs_weight_scale.png")):
        parent = found[found["tags.mlflow.runName"] == stage].iloc[0]
        folder, _, name = figure.rpartition("/")
        assert name in {a.path.rpartition("/")[2] for a in
                        client.list_artifacts(parent.run_id, folder)}
    bn_parent = found[found["tags.mlflow.runName"] == "bn_study"].iloc[0]
    children = found[found["tags.mlflow.parentRunId"] == bn_parent.run_id]
    assert len(children) == 10 and children["tags.diagnosis"].str.len().min() > 0


def test_dvc_plots_name_columns_the_default_studies_write():
    """Every y column of the study plots in dvc.yaml is one the default config writes."""
    defaults = config.Config().study
    series = {f"{init.value}_{activation}" for init in defaults.init.inits
              for activation in study_activations()}
    rows = [{"sweep": sweep, "batchnorm": bn, "weight_scale": 0.1, "lr": 1e-3,
             "train_acc": 0.5, "val_acc": 0.4} for sweep in ("scale", "lr") for bn in (0, 1)]
    written = {"results/init_study/plots/": series | {"layer"},
               "results/bn_study/plots/scale.csv": set(bn_study.wide(rows, "scale",
                                                                     "weight_scale")[0]),
               "results/bn_study/plots/lr.csv": set(bn_study.wide(rows, "lr", "lr")[0])}

    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    checked = 0
    for plot in (p for p in plots if isinstance(p, dict)):
        (props,) = plot.values()
        for path, columns in props["y"].items():
            prefix = next((w for w in written if path.startswith(w)), None)
            if prefix:
                assert {props["x"], *columns} <= written[prefix], path
                checked += 1
    assert checked == 6


class _Quiet:
    def info(self, *args):
        pass
