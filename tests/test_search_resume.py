"""The stage as a whole: worker-count invariance, kill and resume, a killed worker, the cache key.

Every run here is compared byte for byte with one uninterrupted serial run of the same config.
"""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import run
from search_fixtures import (
    build,
    cached,
    children,
    cmdline,
    kill_group,
    outputs,
    run_stage,
    search_runs,
    start_stage,
    tiny_dvc_repo,
    wait_for,
)

# Slower trials than the default tiny search (a 200-unit hidden layer, six epochs, nothing
# stopped early), so that a kill lands while trials are running.
SLOW = ["model.hidden_dims=[200]", "search.coarse.trials=10", "search.coarse.epochs=6",
        "search.early_stop.chance_tol=0", "search.fine.trials=4", "search.fine.epochs=3"]


def from_cache(stderr: str) -> int:
    return int(re.search(r"\((\d+) from the resume cache", stderr).group(1))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted serial run of the slow config: (its outputs, its number of trials)."""
    ws = build(tmp_path_factory.mktemp("reference") / "ws", SLOW, tmp_path_factory)
    run_stage(ws)
    return outputs(ws), len(cached(ws))


@pytest.fixture
def slow_ws(tmp_path, tmp_path_factory):
    return build(tmp_path / "ws", SLOW, tmp_path_factory)


@pytest.mark.parametrize("backend", [["search.backend=local", "search.workers=1"],
                                     ["search.backend=local", "search.workers=2"]])
def test_worker_count_does_not_change_the_search(reference, slow_ws, backend):
    result = run_stage(slow_ws, *backend)

    assert outputs(slow_ws) == reference[0]
    assert from_cache(result.stderr) == 0
    _, parent, kids = search_runs(slow_ws)
    assert len(kids) == 2 + reference[1]  # two probes and every trial
    assert {k.data.tags["backend"] for k in kids} == {"local"}
    ran = {k.data.tags["worker"] for k in kids if k.data.tags["search_stage"] != "probe"}
    assert len(ran) == int(backend[1][-1])
    assert parent.data.tags["best_child_run_id"] in {k.info.run_id for k in kids}


def test_search_killed_mid_way_resumes_to_the_same_result(reference, slow_ws):
    stage = start_stage(slow_ws, "search.backend=local", "search.workers=2")
    wait_for(lambda: len(cached(slow_ws)) >= 3, 300, "three finished trials", stage)
    kill_group(stage)
    done_before = len(cached(slow_ws))
    assert done_before < reference[1]
    assert not (slow_ws / "results/lr_search/best.json").exists()

    result = run_stage(slow_ws, "search.backend=local", "search.workers=2")

    assert outputs(slow_ws) == reference[0]
    assert from_cache(result.stderr) == done_before
    _, _, kids = search_runs(slow_ws)
    assert len(kids) == 2 + reference[1]
    assert sum(k.data.tags["cached"] == "true" for k in kids) == done_before


# Few, long trials (about a second each), so that a worker found running a trial is still
# running it when the kill lands.
LONG = ["model.hidden_dims=[200]", "search.coarse.trials=4", "search.coarse.epochs=30",
        "search.coarse.lr=[1e-3,1e-1]", "search.max_widen=0", "search.early_stop.chance_tol=0",
        "search.fine.trials=2", "search.fine.epochs=10"]


def test_a_killed_worker_is_retried_and_the_search_is_unchanged(tmp_path, tmp_path_factory):
    reference = build(tmp_path / "reference", LONG, tmp_path_factory)
    run_stage(reference)
    ws = build(tmp_path / "ws", LONG, tmp_path_factory)
    stage = start_stage(ws, "search.backend=local", "search.workers=2")
    wait_for(lambda: len(cached(ws)) >= 1, 300, "a finished trial", stage)
    wait_for(lambda: kill_a_busy_worker(stage.pid), 60, "a busy worker", stage)
    _, err = stage.communicate(timeout=600)

    assert stage.returncode == 0, err[-3000:]
    assert "died (exit code -9); running it again" in err
    assert outputs(ws) == outputs(reference)
    _, _, kids = search_runs(ws)
    assert sorted(k.data.tags["attempts"] for k in kids).count("2") == 1


def kill_a_busy_worker(stage_pid: int) -> bool:
    """SIGKILL a worker of the stage that is running a trial; False when none is.

    Each worker is stopped first, then judged: one blocked in read(2) (syscall 0) waits for
    its next trial, any other is running one. Stopped, it cannot finish the trial before the
    kill lands.
    """
    for pid in children(stage_pid):
        if "pipeline.backends" not in cmdline(pid):
            continue
        os.kill(pid, signal.SIGSTOP)
        time.sleep(0.05)  # let the stop take effect
        if Path(f"/proc/{pid}/syscall").read_text().split()[0] != "0":
            os.kill(pid, signal.SIGKILL)
            return True
        os.kill(pid, signal.SIGCONT)
    return False


def test_a_changed_config_reuses_no_trial_and_a_changed_backend_reuses_all(slow_ws):
    first = run_stage(slow_ws)
    before, trials_run = outputs(slow_ws), len(cached(slow_ws))

    changed = run_stage(slow_ws, "search.early_stop.chance_tol=0.02")
    assert from_cache(changed.stderr) == 0

    other_backend = run_stage(slow_ws, "search.backend=local", "search.workers=2")
    assert from_cache(other_backend.stderr) == trials_run
    assert outputs(slow_ws) == before
    assert from_cache(first.stderr) == 0


def test_dvc_keeps_the_cache_so_a_killed_stage_resumes(tmp_path, make_repo):
    """Under `dvc repro`: DVC removes a stage's outputs before it runs it, but not the cache,
    a persistent output."""
    repo, _ = tiny_dvc_repo(tmp_path, make_repo, ["search.coarse.trials=12",
                                                  "search.coarse.epochs=3",
                                                  "search.max_widen=0",
                                                  "search.early_stop.chance_tol=0"])
    run(["dvc", "repro", "sanity"], repo)
    dvc = subprocess.Popen(["dvc", "repro", "lr_search"], cwd=repo, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for(lambda: len(cached(repo)) >= 3, 300, "three finished trials", dvc)
    kill_group(dvc)
    done_before = len(cached(repo))
    assert done_before < 12 + 2

    resumed = run(["dvc", "repro", "lr_search"], repo)

    assert from_cache(resumed.stderr) == done_before
    rows = (repo / "results/lr_search/trials.csv").read_text().splitlines()
    assert len(rows) == 1 + 12 + 2 and len(cached(repo)) == 12 + 2
