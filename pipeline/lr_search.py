"""Stage lr_search: probe the extremes, then coarse-to-fine random search in log space.

First two probes show what a bad learning rate looks like: a tiny one barely moves the loss,
a huge one makes it explode (caught, recorded, never a crash). Then a coarse random search
samples lr and reg log-uniformly for a few epochs on a subset; when the best value sits on
the edge of its range the range is widened and searched again; a fine search zooms in around
the best with more data and epochs. Everything is judged on validation accuracy.

Outputs: results/lr_search/{probes.json, trials.csv, best.json}; in MLflow one parent run
with a nested run per probe and trial, tagged with its best child.
"""

import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline import common, config, net, solver, tracking
from pipeline.io import write_json
from pipeline.log import setup

OUT = Path("results/lr_search")
# run ids differ from run to run, so they stay in MLflow and out of the DVC outputs
FIELDS = ["stage", "round", "trial", "lr", "reg", "status", "val_acc", "train_acc",
          "final_loss"]

# A probe whose loss changed by less than this fraction of where it started "barely moved".
BARELY_MOVES = 0.05


@dataclass(frozen=True)
class Data:
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray


@dataclass
class Search:
    cfg: config.Config
    spec: net.NetSpec
    data: Data


def schedule_for(cfg: config.Config, lr: float, reg: float, epochs: int, **extra):
    t = cfg.train
    return solver.Schedule(lr=lr, reg=reg, epochs=epochs, batch_size=cfg.search.batch_size,
                           update_rule=t.update_rule.value, momentum=t.momentum,
                           lr_decay=t.lr_decay, **extra)


def run_trial(search: Search, name: str, schedule: solver.Schedule, num_train: int,
              rng: np.random.Generator, stage: str) -> tuple[solver.History, str]:
    """One training run as a nested MLflow run; returns its history and run id."""
    d = search.data
    params = net.init_params(search.spec, rng)
    tags = {"lr": schedule.lr, "reg": schedule.reg, "epochs": schedule.epochs,
            "num_train": num_train}

    with tracking.child_run(name, tags, "lr_search") as run:
        buffer = tracking.MetricBuffer(run.info.run_id, search.cfg.tracking.flush_every)
        history = solver.train(
            params, search.spec, d.X_train[:num_train], d.y_train[:num_train], d.X_val,
            d.y_val, schedule, rng,
            on_step=lambda step, loss, ratios: buffer.log({"loss": loss}, step),
            on_epoch=lambda epoch, m: buffer.log(
                {"train_acc": m["train_acc"], "val_acc": m["val_acc"]}, epoch))
        buffer.flush()
        tracking.mlflow.set_tag("status", "diverged" if history.diverged else "ok")
        tracking.mlflow.set_tag("search_stage", stage)
    return history, run.info.run_id


def probe(search: Search, lr: float, label: str) -> dict:
    p = search.cfg.search.probe
    schedule = schedule_for(search.cfg, lr, 0.0, epochs=10**6, max_steps=p.steps)
    rng = common.rng(search.cfg, "lr_search", 0, int(label == "high"))
    history, run_id = run_trial(search, f"probe_{label}_lr", schedule, p.num_train, rng,
                                "probe")

    start, end = history.loss[0], history.loss[-1]
    change = (start - end) / start if math.isfinite(end) else math.inf
    if history.diverged:
        verdict = "too large: the loss exploded"
    elif abs(change) < BARELY_MOVES:
        verdict = "too small: the loss barely moves"
    else:
        verdict = "neither extreme: the loss moves without exploding"
    return {"lr": lr, "steps": len(history.loss), "start_loss": start,
            "end_loss": end if math.isfinite(end) else str(end),
            "relative_decrease": change if math.isfinite(change) else str(change),
            "diverged": history.diverged, "diverged_at_step": history.diverged_at,
            "val_acc": history.val_acc[-1] if history.val_acc else None,
            "verdict": verdict, "run_id": run_id}


def sample_log_uniform(rng: np.random.Generator, bounds, n: int) -> np.ndarray:
    low, high = np.log10(bounds[0]), np.log10(bounds[1])
    return 10.0 ** rng.uniform(low, high, size=n)


def run_round(search: Search, stage: str, round_: int, lr_bounds, reg_bounds, trials: int,
              epochs: int, num_train: int) -> list[dict]:
    sampler = common.rng(search.cfg, "lr_search", 1, round_)
    lrs = sample_log_uniform(sampler, lr_bounds, trials)
    regs = sample_log_uniform(sampler, reg_bounds, trials)

    rows = []
    for i in tqdm(range(trials), desc=f"{stage} round {round_}", unit="trial", disable=None):
        rng = common.rng(search.cfg, "lr_search", 2, round_, i)
        schedule = schedule_for(search.cfg, float(lrs[i]), float(regs[i]), epochs)
        history, run_id = run_trial(search, f"{stage}_{round_}_{i:03d}", schedule, num_train,
                                    rng, stage)
        rows.append({
            "stage": stage, "round": round_, "trial": i, "lr": float(lrs[i]),
            "reg": float(regs[i]), "status": "diverged" if history.diverged else "ok",
            "val_acc": history.val_acc[-1] if history.val_acc else 0.0,
            "train_acc": history.train_acc[-1] if history.train_acc else 0.0,
            "final_loss": history.loss[-1], "run_id": run_id,
        })
    return rows


def best_of(rows: list[dict]) -> dict | None:
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

        flags.append({"round": round_, "best": {k: best[k] for k in bounds},
                      "edges": {k: "low" if v < 0 else "high" for k, v in edges.items()},
                      "widened": round_ < s.max_widen})
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


def main() -> None:
    cfg = config.from_argv()
    log = setup("lr_search")
    start = time.perf_counter()

    X_train, y_train, X_val, y_val = common.load_split(cfg, "X_train", "y_train", "X_val",
                                                       "y_val")
    search = Search(cfg, common.net_spec(cfg, X_train.shape[1]),
                    Data(X_train, y_train, X_val, y_val))

    with tracking.stage_run(cfg, "lr_search") as parent:
        probes = {label: probe(search, lr, label)
                  for label, lr in (("low", cfg.search.probe.low_lr),
                                    ("high", cfg.search.probe.high_lr))}
        for label, p in probes.items():
            end = p["end_loss"]
            log.info("probe lr=%-8.0e %s (loss %.3f -> %s after %d steps)", p["lr"],
                     p["verdict"], p["start_loss"],
                     f"{end:.4g}" if isinstance(end, float) else end, p["steps"])

        rows, bounds, flags = coarse_search(search)
        for flag in flags:
            log.info("best %s on the %s edge of its range%s", flag["best"],
                     flag["edges"], ", range widened" if flag["widened"] else "")
        coarse_best = best_of(rows)
        if coarse_best is None:
            raise SystemExit("lr_search failed: every coarse trial diverged; "
                             f"lower search.coarse.lr (now {cfg.search.coarse.lr})")

        fine_rows = fine_search(search, coarse_best)
        rows += fine_rows
        winner = best_of(fine_rows) or coarse_best
        best = {"lr": winner["lr"], "reg": winner["reg"], "val_acc": winner["val_acc"],
                "stage": winner["stage"], "trial": winner["trial"],
                "coarse_bounds": bounds, "edge_flags": flags,
                "diverged_trials": sum(r["status"] == "diverged" for r in rows)}

        tracking.mlflow.set_tag("best_child_run_id", winner["run_id"])
        tracking.mlflow.log_metrics({"search/best_val_acc": winner["val_acc"],
                                     "search/best_lr": winner["lr"],
                                     "search/best_reg": winner["reg"]})
        write_outputs(probes, rows, best)
        tracking.mlflow.log_artifacts(str(OUT), "lr_search")

    log.info("%d trials (%d diverged) in %.0f s; best lr %.3g reg %.3g val_acc %.3f "
             "(%s trial %d), parent run %s", len(rows), best["diverged_trials"],
             time.perf_counter() - start, best["lr"], best["reg"], best["val_acc"],
             best["stage"], best["trial"], parent.info.run_id)


if __name__ == "__main__":
    main()
