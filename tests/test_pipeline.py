"""The stages run by DVC itself, on a tiny archive in the official format and on the real one."""

import json
import math

import mlflow
import numpy as np
import pytest
from archive_fixtures import make_archive
from conftest import ROOT, SHARED_ARCHIVE, run

from pipeline.archive import file_md5

TINY = [
    "data.num_train=400", "data.num_val=100", "data.num_test=100",
    "sanity.num_images=100", "sanity.overfit_images=20",
    "search.batch_size=50", "search.probe.steps=8", "search.probe.num_train=400",
    "search.coarse.trials=3", "search.coarse.epochs=1", "search.coarse.num_train=400",
    "search.fine.trials=2", "search.fine.epochs=1", "search.fine.num_train=400",
    "search.coarse.lr=[1e-6,1e-5]", "search.coarse.reg=[1e-3,1e-2]",
    "search.max_widen=1", "train.epochs=2", "train.batch_size=50",
]


@pytest.fixture
def tiny_repo(tmp_path, make_repo):
    source = tmp_path / "mirror"
    source.mkdir()
    archive = source / "cifar-10-python.tar.gz"
    make_archive(archive, n_per_batch=100, seed=3)
    return make_repo(source, TINY + [f"+data.md5.tiny={file_md5(archive)}"])


def read(repo, path):
    return json.loads((repo / path).read_text())


def test_dvc_repro_runs_every_stage_and_logs_to_mlflow(tiny_repo, tmp_path):
    """The main job; the study stages have their own end-to-end test in test_bn_study.py."""
    run(["dvc", "repro", "train"], tiny_repo)

    meta = read(tiny_repo, "data/cifar10/meta.json")
    assert meta["source"] == "tiny"
    assert sum(meta["train_counts"]) == 500 and sum(meta["test_counts"]) == 100
    X = np.load(tiny_repo / "data/preprocessed/mean_image/X_train.npy")
    assert X.shape == (400, 3072) and X.dtype == np.float32

    sanity = read(tiny_repo, "results/sanity/report.json")
    assert sanity["passed"], sanity
    probes = read(tiny_repo, "results/lr_search/probes.json")
    assert probes["high"]["diverged"] is True
    assert probes["high"]["verdict"].startswith("too large")

    metrics = read(tiny_repo, "results/train/metrics.json")
    best = read(tiny_repo, "results/lr_search/best.json")
    assert metrics["lr"] == best["lr"] and 0.0 <= metrics["test_acc"] <= 1.0
    assert (tiny_repo / "models/best.npz").is_file()
    loss_rows = (tiny_repo / "results/train/history/loss.csv").read_text().splitlines()
    assert len(loss_rows) == 1 + 2 * (400 // 50)

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["cifar10-babysitting"])
    stages = set(runs["tags.stage"])
    assert {"fetch", "preprocess/mean_image", "sanity", "lr_search", "train"} <= stages
    train_run = runs[runs["tags.mlflow.runName"] == "train"].iloc[0]
    assert train_run["params.train.epochs"] == "2"
    assert train_run["tags.archive_md5"] == meta["md5"]
    client = mlflow.tracking.MlflowClient()
    assert len(client.get_metric_history(train_run.run_id, "train/loss")) == 16
    assert len(client.get_metric_history(train_run.run_id, "update_ratio/W1")) == 16
    assert len(client.get_metric_history(train_run.run_id, "val/acc")) == 2

    search_run = runs[runs["tags.mlflow.runName"] == "lr_search"].iloc[0]
    children = runs[runs["tags.mlflow.parentRunId"] == search_run.run_id]
    trials = (tiny_repo / "results/lr_search/trials.csv").read_text().splitlines()[1:]
    assert len(children) == 2 + len(trials)
    assert len(trials) in (3 + 2, 2 * 3 + 2)
    assert search_run["tags.best_child_run_id"] in set(children.run_id)

    second = run(["dvc", "repro", "train"], tiny_repo)
    assert "didn't change" in second.stdout or "up to date" in second.stdout
    assert "Running stage" not in second.stdout


def test_second_run_gives_identical_metrics(tiny_repo):
    run(["dvc", "repro", "train"], tiny_repo)
    first = {p: (tiny_repo / p).read_text() for p in (
        "results/sanity/report.json", "results/lr_search/best.json",
        "results/lr_search/trials.csv", "results/train/metrics.json")}

    run(["dvc", "repro", "--force", "train"], tiny_repo)
    for path, text in first.items():
        assert (tiny_repo / path).read_text() == text, path


def test_wrong_archive_fails_fetch_and_writes_nothing(tmp_path, make_repo):
    source = tmp_path / "mirror"
    source.mkdir()
    make_archive(source / "cifar-10-python.tar.gz", n_per_batch=10)
    repo = make_repo(source, TINY)

    result = run(["dvc", "repro", "fetch"], repo, check=False)
    assert result.returncode != 0
    found = file_md5(source / "cifar-10-python.tar.gz")
    assert found in result.stderr and "c58f30108f718f92721af3b95e74349a" in result.stderr
    assert not (repo / "data/cifar10").exists()


@pytest.mark.skipif(not SHARED_ARCHIVE.is_file(), reason="no ../shared/data mirror")
def test_real_archive_passes_the_sanity_gate(make_repo):
    """The CI gate: fetch, preprocess and sanity on the real CIFAR-10 mirror."""
    repo = make_repo(SHARED_ARCHIVE.parent)
    run(["dvc", "repro", "sanity"], repo)

    report = read(repo, "results/sanity/report.json")
    checks = report["checks"]
    assert report["passed"], checks
    assert abs(checks["initial_loss"]["value"] - math.log(10)) <= 0.05
    assert checks["regularization_raises_loss"]["value"] > 0
    assert checks["overfit_small_subset"]["value"] == 1.0
    assert checks["gradient_no_reg"]["value"] <= 1e-7
    X_val = np.load(repo / "data/preprocessed/mean_image/X_val.npy", mmap_mode="r")
    assert X_val.shape == (1000, 3072)


def test_committed_data_dvc_lets_a_fresh_clone_import():
    """With hashes recorded, `dvc repro` on a fresh clone wants the cache instead of the remote."""
    committed = run(["git", "show", "HEAD:data.dvc"], ROOT).stdout

    assert "remote://cifar10/cifar-10-python.tar.gz" in committed
    assert "md5:" not in committed and "size:" not in committed


@pytest.mark.parametrize("edit, message", [
    (("preprocess", "scale_sdt", False), "unknown config key 'preprocess.scale_sdt'"),
    (("preprocess", "mode", "zca"), "'preprocess.mode'"),
    (("train", "lr", -1.0), "train.lr must be > 0"),
])
def test_bad_params_stop_dvc_repro_before_any_stage(tiny_repo, edit, message):
    import yaml

    group, key, value = edit
    params = yaml.safe_load((tiny_repo / "params.yaml").read_text())
    params[group][key] = value
    (tiny_repo / "params.yaml").write_text(yaml.safe_dump(params))

    result = run(["dvc", "repro"], tiny_repo, check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Running stage 'fetch'" not in result.stdout
    assert not (tiny_repo / "data/cifar10").exists()


def test_one_repro_builds_both_preprocessing_variants(tiny_repo):
    run(["dvc", "repro", "preprocess"], tiny_repo)

    for mode, stat_shape in (("mean_image", (32, 32, 3)), ("per_channel", (3,))):
        folder = tiny_repo / "data/preprocessed" / mode
        assert np.load(folder / "X_val.npy").shape == (100, 3072)
        assert np.load(folder / "mean.npy").shape == stat_shape
