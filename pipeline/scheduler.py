"""The trials of one search: budget first, then the resume cache, then a backend, then MLflow.

`Scheduler.run` takes a round's trials in search order and returns them in that order with
their outcomes, however the backend interleaved them. Each outcome is cached and logged as a
nested MLflow run the moment it arrives, so a search killed mid-round loses only the trials
that were running.
"""

import time
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from pipeline import backends, config, tracking, trials
from pipeline.resume import CACHE, TrialCache
from pipeline.trials import Arrays, Outcome, Setup, Trial


class Budget:
    """search.budget: a cap on trials, counted in search order so that the same trials run
    whatever the backend, and a wall-time cap after which no trial starts (running ones
    finish). A wall-time cap makes the result depend on the machine's speed, by nature."""

    def __init__(self, cfg: config.BudgetConfig, clock=time.monotonic):
        self.trials_left = cfg.trials
        self.clock = clock
        self.deadline = None if cfg.seconds is None else clock() + cfg.seconds
        self.exhausted: str | None = None  # "trials" | "seconds" once it has cut something

    def take(self, plan: list[Trial]) -> list[Trial]:
        if self.exhausted:
            return []
        if self.trials_left is None:
            return plan
        kept = plan[:self.trials_left]
        self.trials_left -= len(kept)
        if len(kept) < len(plan):
            self.exhausted = "trials"
        return kept

    def more(self) -> bool:
        if self.deadline is not None and self.clock() >= self.deadline:
            self.exhausted = self.exhausted or "seconds"
            return False
        return True


def open_backend(s: config.SearchConfig, fn: backends.TrialFn, setup: Setup, data: Arrays,
                 folder: Path):
    if s.backend == config.SearchBackend.local:
        return backends.Local(fn, setup, folder, s.workers or backends.cores(), s.retries)
    if s.backend == config.SearchBackend.ray:
        return backends.Ray(fn, setup, data, s.workers, s.retries, s.ray.address)
    return backends.Serial(fn, setup, data)


class Scheduler:
    def __init__(self, cfg: config.Config, setup: Setup, data: Arrays, folder: Path,
                 parent, fn: backends.TrialFn = trials.run_trial, cache: Path = CACHE):
        self.cfg, self.setup, self.data, self.folder, self.fn = cfg, setup, data, folder, fn
        self.parent = parent
        self.budget = Budget(cfg.search.budget)
        self.cache = TrialCache(setup, data, cache)
        self.tags = {**tracking.run_tags("lr_search"), "backend": cfg.search.backend.value}
        self.backend = None
        self.counts: Counter[str] = Counter()

    def __enter__(self) -> "Scheduler":
        return self

    def __exit__(self, *exc) -> None:
        if self.backend is not None:
            self.backend.close()

    def run(self, plan: list[Trial], desc: str) -> list[tuple[Trial, Outcome, str]]:
        plan = self.budget.take(plan)
        done, todo = {}, []
        for trial in plan:
            outcome = self.cache.get(trial)
            if outcome is None:
                todo.append(trial)
            else:
                done[trial] = (outcome, self.record(trial, outcome))
        if todo:
            # started only when some trial is not cached, so a full resume starts no workers
            self.backend = self.backend or open_backend(self.cfg.search, self.fn, self.setup,
                                                        self.data, self.folder)
            finished = self.backend.run(todo, self.budget.more)
            for trial, outcome in tqdm(finished, desc, total=len(todo), unit="trial",
                                       disable=None):
                self.cache.put(trial, outcome)
                done[trial] = (outcome, self.record(trial, outcome))
        return [(trial, *done[trial]) for trial in plan if trial in done]

    def record(self, trial: Trial, outcome: Outcome) -> str:
        """The trial as a nested MLflow run under the search's run; returns its id."""
        self.counts["cached" if outcome.cached else "ran"] += 1
        self.counts[outcome.status] += 1
        params = {"lr": trial.lr, "reg": trial.reg, "epochs": trial.epochs,
                  "num_train": trial.num_train}
        tags = {**self.tags, "search_stage": trial.stage, "status": outcome.status,
                "reason": outcome.reason, "worker": outcome.worker,
                "attempts": str(outcome.attempts), "cached": str(outcome.cached).lower()}
        points = [*outcome.points, ("seconds", outcome.seconds, 0, outcome.ended_ms)]
        status = "FAILED" if outcome.status == "failed" else "FINISHED"
        return tracking.log_child_run(self.parent, trial.name, params, tags, points,
                                      outcome.started_ms, outcome.ended_ms, status)
