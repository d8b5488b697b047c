"""Local worker processes and the Ray extra: dying workers, bugs in trials, the missing extra."""

import os
import subprocess
import sys
from functools import partial

import pytest
from conftest import ROOT
from search_fixtures import DOOMED, SEARCH, broken, flaky, make_arrays, where
from test_lr_search import comparable, plan, setup_for

from pipeline import backends, config, trials


@pytest.fixture(scope="module")
def cfg():
    return config.load(ROOT / "params.yaml", SEARCH)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("arrays")
    make_arrays(path)
    return path


def run_pool(fn, cfg, folder, todo, workers=2, retries=2) -> dict:
    pool = backends.Local(fn, setup_for(cfg), folder, workers, retries)
    try:
        return dict(pool.run(todo, lambda: True))
    finally:
        pool.close()


def test_a_dead_worker_costs_an_attempt_then_the_trial_is_recorded_failed(
        cfg, folder, tmp_path):
    todo = plan(cfg, count=4)

    got = run_pool(partial(flaky, str(tmp_path)), cfg, folder, todo, retries=2)

    data = backends.load(folder, mmap=False)
    retried = got[todo[0]]
    assert retried.status != "failed" and retried.attempts == 2
    assert comparable(retried) == comparable(trials.run_trial(setup_for(cfg), todo[0], data))
    doomed = got[todo[DOOMED]]
    assert doomed.status == "failed" and doomed.attempts == 3
    assert doomed.reason == "its worker died every time (3 attempts)"
    assert [got[t].attempts for t in todo[2:]] == [1, 1]
    assert all(got[t].status != "failed" for t in todo if t.index != DOOMED)


def test_no_retries_means_one_attempt(cfg, folder, tmp_path):
    got = run_pool(partial(flaky, str(tmp_path)), cfg, folder, plan(cfg, count=2), workers=1,
                   retries=0)
    assert [o.status for o in got.values()] == ["failed", "failed"]
    assert [o.attempts for o in got.values()] == [1, 1]


def test_an_exception_in_a_trial_stops_the_search_with_its_traceback(cfg, folder):
    with pytest.raises(backends.TrialError, match="no such layer in coarse_0_00"):
        run_pool(broken, cfg, folder, plan(cfg, count=3))


def test_each_worker_maps_the_arrays_once_and_serves_many_trials(cfg, folder):
    got = run_pool(where, cfg, folder, plan(cfg, count=6), workers=2)
    assert len({o.worker for o in got.values()}) == 2
    assert {o.reason for o in got.values()} == {f"memmap:{folder / 'X_train.npy'}:read-only"}


def test_a_worker_that_cannot_start_stops_the_search_instead_of_failing_trials(cfg, tmp_path):
    with pytest.raises(backends.BackendError, match="a local worker failed to start"):
        run_pool(trials.run_trial, cfg, tmp_path, plan(cfg, count=2))  # no arrays there


def test_missing_ray_extra_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets without the extra
    with pytest.raises(backends.BackendError, match=r"pip install -e '\.\[ray\]'"):
        backends.import_ray(None)


def test_stage_with_ray_but_without_the_extra_stops_before_any_work(tmp_path):
    fake = tmp_path / "site" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path / 'site'}"}

    result = subprocess.run([sys.executable, "-m", "pipeline.lr_search", "search.backend=ray"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, check=False)

    assert result.returncode == 1
    assert "search.backend=ray needs Ray, an optional extra" in result.stderr
    assert "pip install -e '.[ray]'" in result.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("address, loopback", [
    (None, True), ("127.0.0.1:6379", True), ("localhost:6379", True),
    ("ray://127.0.0.1:10001", True), ("[::1]:6379", True), ("10.0.0.5:6379", False),
    ("head.example:6379", False),
])
def test_only_clusters_on_loopback_are_kept_off_the_network(address, loopback):
    assert backends.is_loopback(address) is loopback
