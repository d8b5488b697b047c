"""The search's pieces in this process: trials as independent tasks, stopping, budget, cache."""

import math
from dataclasses import replace

import numpy as np
import pytest
from conftest import ROOT
from search_fixtures import SEARCH, STEPS_PER_EPOCH, make_arrays

from pipeline import backends, common, config, lr_search, trials
from pipeline.resume import TrialCache
from pipeline.scheduler import Budget


def comparable(outcome: trials.Outcome) -> tuple:
    """Everything a trial computed; not when, where, or how often it ran."""
    values = [(key, value, step) for key, value, step, _ in outcome.points]
    return (outcome.status, outcome.reason, outcome.loss, outcome.train_acc, outcome.val_acc,
            outcome.diverged_at, values)


@pytest.fixture(scope="module")
def cfg():
    return config.load(ROOT / "params.yaml", SEARCH)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("arrays")
    make_arrays(path)
    return path


@pytest.fixture(scope="module")
def data(folder):
    return backends.load(folder, mmap=False)


def setup_for(cfg, chance_tol: float = 0.01) -> trials.Setup:
    return trials.Setup(common.net_spec(cfg, 3072), lr_search.schedule_for(cfg, 0.0, 0.0, 1),
                        blas_threads=1, chance_tol=chance_tol)


def plan(cfg, count: int = 4, lr=(1e-2, 1.0), epochs: int = 3) -> list[trials.Trial]:
    return lr_search.plan_round(cfg, "coarse", 0, lr, [1e-5, 1e-1], count, epochs, 400)


def test_a_trial_seed_is_the_search_seed_and_its_own_keys(cfg):
    first = plan(cfg, count=3)
    assert [t.seed for t in first] == [(0, 2, 2, 0, i) for i in range(3)]
    assert [t.name for t in first] == ["coarse_0_000", "coarse_0_001", "coarse_0_002"]
    shifted = lr_search.plan_round(replace(cfg, seed=7), "coarse", 1, [1e-2, 1], [1e-5, 1e-1],
                                   2, 3, 400)
    assert [t.seed for t in shifted] == [(7, 2, 2, 1, 0), (7, 2, 2, 1, 1)]


def test_outcomes_do_not_depend_on_order_or_worker_count(cfg, data, folder):
    setup, todo = setup_for(cfg), plan(cfg)
    in_order = {t: comparable(trials.run_trial(setup, t, data)) for t in todo}
    reversed_ = {t: comparable(trials.run_trial(setup, t, data)) for t in reversed(todo)}
    assert reversed_ == in_order

    for workers in (1, 2):
        pool = backends.Local(trials.run_trial, setup, folder, workers, retries=0)
        try:
            pooled = {t: comparable(o) for t, o in pool.run(todo, lambda: True)}
        finally:
            pool.close()
        assert pooled == in_order, f"{workers} workers"
    assert {o[0] for o in in_order.values()} >= {"ok"}


def test_blas_threads_are_capped_inside_a_trial(cfg, data, monkeypatch):
    from threadpoolctl import threadpool_info

    seen, train = [], trials.solver.train

    def spy(*args, **kwargs):
        seen.extend(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
        return train(*args, **kwargs)

    monkeypatch.setattr(trials.solver, "train", spy)
    trials.run_trial(setup_for(cfg), plan(cfg, count=1)[0], data)
    assert seen and set(seen) == {1}


def test_a_trial_at_chance_after_one_epoch_stops_with_the_reason(cfg, data):
    tiny_lr = trials.Trial("coarse_0_000", "coarse", 0, 0, 1e-6, 1e-3, 3, 400, (0, 2, 2, 0, 0))

    stopped = trials.run_trial(setup_for(cfg), tiny_lr, data)
    assert stopped.status == "stopped"
    assert "of ln 10 after the first epoch" in stopped.reason
    assert len(stopped.loss) == STEPS_PER_EPOCH and len(stopped.val_acc) == 1
    assert abs(stopped.loss[-1] - math.log(10)) < 0.01

    kept = trials.run_trial(setup_for(cfg, chance_tol=0.0), tiny_lr, data)
    assert kept.status == "ok" and len(kept.val_acc) == 3
    assert kept.loss[:STEPS_PER_EPOCH] == stopped.loss


def test_a_diverged_trial_records_where_it_exploded(cfg, data):
    huge = trials.Trial("coarse_0_000", "coarse", 0, 0, 1e4, 0.0, 3, 400, (0, 2, 2, 0, 0))
    outcome = trials.run_trial(setup_for(cfg), huge, data)
    assert outcome.status == "diverged"
    assert outcome.reason == f"loss {outcome.loss[-1]:.4g} exploded at step " \
                             f"{outcome.diverged_at}"
    assert len(outcome.loss) == outcome.diverged_at + 1


def test_a_stopped_diverged_or_failed_trial_never_wins():
    rows = [{"status": status, "val_acc": acc, "round": 0, "trial": i}
            for i, (status, acc) in enumerate([("stopped", 0.9), ("diverged", 0.8),
                                               ("failed", 0.0), ("ok", 0.3), ("ok", 0.4)])]
    assert lr_search.best_of(rows)["trial"] == 4
    assert lr_search.best_of(rows[:3]) is None


def test_budget_caps_trials_in_search_order(cfg):
    budget = Budget(config.BudgetConfig(trials=5))
    first, second = plan(cfg, count=4), plan(cfg, count=4)
    assert budget.take(first) == first and budget.exhausted is None
    assert budget.take(second) == second[:1] and budget.exhausted == "trials"
    assert budget.take(first) == []


def test_budget_in_seconds_stops_new_trials_only():
    now = [100.0]
    budget = Budget(config.BudgetConfig(seconds=30), clock=lambda: now[0])
    assert budget.more() and budget.exhausted is None
    now[0] = 130.0
    assert not budget.more() and budget.exhausted == "seconds"


def test_serial_backend_stops_dispatching_when_the_budget_says_so(cfg, data):
    todo, allowed = plan(cfg, count=3), iter([True, True, False])
    done = list(backends.Serial(trials.run_trial, setup_for(cfg), data)
                .run(todo, lambda: next(allowed)))
    assert [t for t, _ in done] == todo[:2]


def test_cache_key_covers_what_decides_a_trial_and_nothing_else(cfg, data, tmp_path):
    trial = plan(cfg, count=1)[0]
    key = TrialCache(setup_for(cfg), data, tmp_path).key(trial)

    assert TrialCache(setup_for(cfg), data, tmp_path).key(trial) == key
    assert TrialCache(setup_for(cfg, 0.02), data, tmp_path).key(trial) != key
    assert TrialCache(setup_for(cfg), data, tmp_path).key(replace(trial, lr=0.5)) != key
    assert TrialCache(setup_for(cfg), data, tmp_path).key(replace(trial, seed=(1,))) != key
    changed = trials.Arrays(data.X_train.copy(), data.y_train, data.X_val, data.y_val)
    changed.X_train[0, 0] += 1
    assert TrialCache(setup_for(cfg), changed, tmp_path).key(trial) != key


def test_cached_outcome_reads_back_equal(cfg, data, tmp_path):
    setup, trial = setup_for(cfg), plan(cfg, count=1)[0]
    cache = TrialCache(setup, data, tmp_path)
    outcome = trials.run_trial(setup, trial, data)
    cache.put(trial, outcome)
    again = cache.get(trial)
    assert again.cached and comparable(again) == comparable(outcome)
    assert (again.started_ms, again.ended_ms) == (outcome.started_ms, outcome.ended_ms)

    cache.put(replace(trial, index=1), trials.failed(3, "its worker died every time"))
    assert cache.get(replace(trial, index=1)) is None


@pytest.mark.parametrize("override, key", [
    (["search.backend=gpu"], "search.backend"),
    (["search.workers=0"], "search.workers"),
    (["search.blas_threads=0"], "search.blas_threads"),
    (["search.retries=-1"], "search.retries"),
    (["search.budget.trials=0"], "search.budget.trials"),
    (["search.budget.seconds=-5"], "search.budget.seconds"),
    (["search.early_stop.chance_tol=-0.1"], "search.early_stop.chance_tol"),
])
def test_bad_search_values_name_the_key(override, key):
    with pytest.raises(config.ConfigError, match=key.replace(".", r"\.")):
        config.load(ROOT / "params.yaml", override)


def test_search_defaults_run_serially_with_one_blas_thread():
    s = config.load(ROOT / "params.yaml").search
    assert s.backend == config.SearchBackend.serial
    assert (s.workers, s.blas_threads, s.retries) == (None, 1, 2)
    assert (s.budget.trials, s.budget.seconds, s.ray.address) == (None, None, None)
    assert s.early_stop.chance_tol == 0.01


def test_arrays_are_float32_views_of_the_files(folder):
    data = backends.load(folder, mmap=True)
    assert isinstance(data.X_train, np.memmap) and data.X_train.dtype == np.float32
