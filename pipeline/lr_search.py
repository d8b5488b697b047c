"""Stage lr_search: probe the extremes, then coarse-to-fine random search in log space.

First two probes show what a bad learning rate looks like: a tiny one barely moves the loss,
a huge one makes it explode (caught, recorded, never a crash). Then a coarse random search
samples lr and reg log-uniformly for a few epochs on a subset; when the best value sits on
the edge of its range the range is widened and searched again; a fine search zooms in around
the best with more data and epochs. Everything is judged on validation accuracy.

Trials are independent tasks (pipeline.trials) run by the backend that `search.backend`
names (pipeline.backends), through a scheduler that applies `search.budget`, skips trials a
killed run already finished (pipeline.resume) and logs each one to MLflow
(pipeline.scheduler). Hopeless trials stop early and never win.

Outputs: results/lr_search/{probes.json, trials.csv, best.json}; in MLflow one parent run
with a nested run per probe and trial, tagged with its best child.
"""

import csv
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import backends, common, config, solver, tracking, trials
from pipeline.io import write_json
from pipeline.log import setup
from pipeline.scheduler import Scheduler
from pipeline.trials import Arrays, Outcome, Trial

OUT = Path("results/lr_search")
OUTPUTS = ("probes.json", "trials.csv", "best.json")
# run ids and timings differ from run to run, so they stay in MLflow, out of the DVC outputs
FIELDS = ["stage", "round", "trial", "lr", "reg", "status", "reason", "val_acc", "train_acc",
          "final_loss"]

# A probe whose loss changed by less than this fraction of where it started "barely moved".
BARELY_MOVES = 0.05


@dataclass
class Search:
    cfg: config.Config
    setup: trials.Setup
    data: Arrays
    scheduler: Scheduler


def schedule_for(cfg: config.Config, lr: float, reg: float, epochs: int, **extra):
    o = cfg.optim
    return solver.Schedule(lr=lr, reg=reg, epochs=epochs, batch_size=cfg.search.batch_size,
                           update_rule=o.update_rule.value, momentum=o.momentum,
                           beta1=o.beta1, beta2=o.beta2, eps=o.eps,
                           lr_decay=cfg.train.lr_decay, **extra)


def seed_keys(cfg: config.Config, *keys: int) -> tuple[int, ...]:
    """The seed of one trial: the search seed and the trial's own keys, as common.rng does."""
    return (cfg.seed, common.STREAMS["lr_search"], *keys)


def probe(search: Search, lr: float, label: str) -> dict:
    cfg, p = search.cfg, search.cfg.search.probe
    index = int(label == "high")
    trial = Trial(f"probe_{label}_lr", "probe", 0, index, lr, 0.0, epochs=10**6,
                  num_train=p.num_train, seed=seed_keys(cfg, 0, index), max_steps=p.steps,
                  early_stop=False)
    outcome = trials.run_trial(search.setup, trial, search.data)
    search.scheduler.record(trial, outcome)

    start, end = outcome.loss[0], outcome.loss[-1]
    diverged = outcome.status == "diverged"
    change = (start - end) / start if math.isfinite(end) else math.inf
    if diverged:
        verdict = "too large: the loss exploded"
    elif abs(change) < BARELY_MOVES:
        verdict = "too small: the loss barely moves"
    else:
        verdict = "neither extreme: the loss moves without exploding"
    return {"lr": lr, "steps": len(outcome.loss), "start_loss": start,
            "end_loss": end if math.isfinite(end) else str(end),
            "relative_decrease": change if math.isfinite(change) else str(change),
            "diverged": diverged, "diverged_at_step": outcome.diverged_at,
            "val_acc": outcome.val_acc[-1] if outcome.val_acc else None,
            "verdict": verdict}


def sample_log_uniform(rng: np.random.Generator, bounds, n: int) -> np.ndarray:
    low, high = np.log10(bounds[0]), np.log10(bounds[1])
    return 10.0 ** rng.uniform(low, high, size=n)


def plan_round(cfg: config.Config, stage: str, round_: int, lr_bounds, reg_bounds,
               count: int, epochs: int, num_train: int) -> list[Trial]:
    """The trials of one round, in search order; all drawn here, before any of them runs."""
    sampler = common.rng(cfg, "lr_search", 1, round_)
    lrs = sample_log_uniform(sampler, lr_bounds, count)
    regs = sample_log_uniform(sampler, reg_bounds, count)
    return [Trial(f"{stage}_{round_}_{i:03d}", stage, round_, i, float(lrs[i]), float(regs[i]),
                  epochs, num_train, seed=seed_keys(cfg, 2, round_, i))
            for i in range(count)]


def row(trial: Trial, outcome: Outcome, run_id: str) -> dict:
    return {"stage": trial.stage, "round": trial.round, "trial": trial.index, "lr": trial.lr,
            "reg": trial.reg, "status": outcome.status, "reason": outcome.reason,
            "val_acc": outcome.val_acc[-1] if outcome.val_acc else 0.0,
            "train_acc": outcome.train_acc[-1] if outcome.train_acc else 0.0,
            "final_loss": outcome.loss[-1] if outcome.loss else math.nan, "run_id": run_id}


def run_round(search: Search, stage: str, round_: int, lr_bounds, reg_bounds, count: int,
              epochs: int, num_train: int) -> list[dict]:
    plan = plan_round(search.cfg, stage, round_, lr_bounds, reg_bounds, count, epochs,
                      num_train)
    finished = search.scheduler.run(plan, f"{stage} round {round_}")
    return [row(trial, outcome, run_id) for trial, outcome, run_id in finished]


def best_of(rows: list[dict]) -> dict | None:
    """The best finished trial; a diverged, stopped or failed one never wins."""
    finished = [r for r in rows if r["status"] == "ok"]
    return max(finished, key=lambda r: (r["val_acc"], -r["round"], -r["trial"]),
               default=None)


def edge_side(value: float, bounds, edge: float) -> int:
    """-1 when value sits in the low `edge` fraction of the log range, +1 high, else 0."""
    low, high = math.log10(bounds[0]), math.log10(bounds[1])
    where = (math.log10(value) - low) / (high - low)
    return -1 if where < edge else 1 if where > 1 - edge else 0


def widen(bounds, side: int) -> list[float]:
    """Move the range half a width further towards the edge the best value touched."""
    low, high = math.log10(bounds[0]), math.log10(bounds[1])
    shift = side * (high - low) / 2
    return [10.0 ** (low + shift), 10.0 ** (high + shift)]


def coarse_search(search: Search) -> tuple[list[dict], dict, list[dict]]:
    s = search.cfg.search
    bounds = {"lr": list(s.coarse.lr), "reg": list(s.coarse.reg)}
    rows, flags = [], []

    for round_ in range(s.max_widen + 1):
        rows += run_round(search, "coarse", round_, bounds["lr"], bounds["reg"],
                          s.coarse.trials, s.coarse.epochs, s.coarse.num_train)
        best = best_of(rows)
        if best is None:
            break
        sides = {key: edge_side(best[key], bounds[key], s.edge) for key in bounds}
        edges = {key: side for key, side in sides.items() if side}
        if not edges:
            break

        widened = round_ < s.max_widen and not search.scheduler.budget.exhausted
        flags.append({"round": round_, "best": {k: best[k] for k in bounds},
                      "edges": {k: "low" if v < 0 else "high" for k, v in edges.items()},
                      "widened": widened})
        if not widened:
            break
        for key, side in edges.items():
            bounds[key] = widen(bounds[key], side)
    return rows, bounds, flags


def fine_search(search: Search, around: dict) -> list[dict]:
    f = search.cfg.search.fine
    half = 10.0 ** (f.span / 2)
    lr_bounds = [around["lr"] / half, around["lr"] * half]
    reg_bounds = [around["reg"] / half, around["reg"] * half]
    return run_round(search, "fine", 0, lr_bounds, reg_bounds, f.trials, f.epochs,
                     f.num_train)


def write_outputs(probes, rows, best) -> None:
    write_json(OUT / "probes.json", probes)
    write_json(OUT / "best.json", best)
    tmp = OUT / ".trials.csv.tmp"
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    tmp.rename(OUT / "trials.csv")


def data_folder(cfg: config.Config) -> Path:
    folder = common.PREPROCESSED / cfg.preprocess.mode.value
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is missing: run `dvc repro preprocess` first")
    return folder


def summary(rows: list[dict], winner: dict, bounds, flags, exhausted: str | None) -> dict:
    count = {status: sum(r["status"] == status for r in rows)
             for status in ("diverged", "stopped", "failed")}
    return {"lr": winner["lr"], "reg": winner["reg"], "val_acc": winner["val_acc"],
            "stage": winner["stage"], "trial": winner["trial"], "coarse_bounds": bounds,
            "edge_flags": flags, "diverged_trials": count["diverged"],
            "stopped_trials": count["stopped"], "failed_trials": count["failed"],
            "budget_exhausted": exhausted}


def search_all(search: Search, log) -> tuple[dict, list[dict], dict, str]:
    """Probes, coarse rounds, fine round: probes, rows, best.json's content, winner's run id."""
    cfg = search.cfg
    probes = {label: probe(search, lr, label)
              for label, lr in (("low", cfg.search.probe.low_lr),
                                ("high", cfg.search.probe.high_lr))}
    for p in probes.values():
        end = p["end_loss"]
        log.info("probe lr=%-8.0e %s (loss %.3f -> %s after %d steps)", p["lr"], p["verdict"],
                 p["start_loss"], f"{end:.4g}" if isinstance(end, float) else end, p["steps"])

    rows, bounds, flags = coarse_search(search)
    for flag in flags:
        log.info("best %s on the %s edge of its range%s", flag["best"], flag["edges"],
                 ", range widened" if flag["widened"] else "")
    coarse_best = best_of(rows)
    if coarse_best is None:
        raise SystemExit("lr_search failed: no coarse trial finished (all diverged, stopped "
                         f"or failed); lower search.coarse.lr (now {cfg.search.coarse.lr}) "
                         "or raise search.budget")

    fine_rows = fine_search(search, coarse_best)
    rows += fine_rows
    winner = best_of(fine_rows) or coarse_best
    best = summary(rows, winner, bounds, flags, search.scheduler.budget.exhausted)
    return probes, rows, best, winner["run_id"]


def main() -> None:
    cfg = config.from_argv()
    log = setup("lr_search")
    start = time.perf_counter()
    if cfg.search.backend == config.SearchBackend.ray:
        try:  # a missing extra stops the stage before any work
            backends.import_ray(cfg.search.ray.address)
        except backends.BackendError as err:
            sys.exit(f"lr_search: {err}")

    folder = data_folder(cfg)
    data = backends.load(folder, mmap=True)
    setup_ = trials.Setup(common.net_spec(cfg, data.X_train.shape[1]),
                          schedule_for(cfg, 0.0, 0.0, 1), cfg.search.blas_threads,
                          cfg.search.early_stop.chance_tol)

    with tracking.stage_run(cfg, "lr_search") as parent, \
            Scheduler(cfg, setup_, data, folder, parent) as scheduler:
        search = Search(cfg, setup_, data, scheduler)
        probes, rows, best, winner_run = search_all(search, log)
        write_outputs(probes, rows, best)

        tracking.mlflow.set_tag("best_child_run_id", winner_run)
        backend = scheduler.backend
        tracking.mlflow.log_metrics({
            "search/best_val_acc": best["val_acc"], "search/best_lr": best["lr"],
            "search/best_reg": best["reg"], "search/seconds": time.perf_counter() - start,
            "search/cached_trials": scheduler.counts["cached"],
            "search/backend_startup_seconds": backend.startup_seconds if backend else 0.0})
        for name in OUTPUTS:
            tracking.mlflow.log_artifact(str(OUT / name), "lr_search")

    c = scheduler.counts
    log.info("%d trials (%d from the resume cache; %d stopped, %d diverged, %d failed) on %s "
             "in %.0f s; best lr %.3g reg %.3g val_acc %.3f (%s trial %d), parent run %s",
             len(rows), c["cached"], best["stopped_trials"], best["diverged_trials"],
             best["failed_trials"], cfg.search.backend.value, time.perf_counter() - start,
             best["lr"], best["reg"], best["val_acc"], best["stage"], best["trial"],
             parent.info.run_id)


if __name__ == "__main__":
    main()
