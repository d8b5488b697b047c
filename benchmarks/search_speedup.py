"""Wall time of the coarse search with 1 and 2 workers, on the local and the Ray backend.

    python benchmarks/search_speedup.py                       # run from the repository root
    python benchmarks/search_speedup.py --trials 12 --backends local

Runs lr_search's coarse stage (every round, widening included) on the real preprocessed
arrays with each backend and worker count, each time with an empty resume cache and its own
throwaway MLflow store, and prints the wall times and the speedup of 2 workers over 1. The
Ray times include starting a local cluster; its start-up is also shown on its own. Trials run
with one BLAS thread each whatever the worker count, so the trials are the same work in every
configuration (and give the same numbers).
"""

import argparse
import dataclasses
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import backends, common, config, lr_search, tracking, trials
from pipeline.scheduler import Scheduler


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/preprocessed/mean_image"),
                        help="folder of X_train.npy, y_train.npy, X_val.npy, y_val.npy")
    parser.add_argument("--trials", type=int, help="coarse trials per round (default: config)")
    parser.add_argument("--backends", nargs="+", default=["local", "ray"],
                        choices=["serial", "local", "ray"])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeat", type=int, default=1, help="runs per setting; the best counts")
    return parser.parse_args()


def coarse_seconds(cfg: config.Config, folder: Path) -> tuple[float, float, int]:
    """(wall time of the coarse stage, backend start-up within it, trials run)."""
    data = backends.load(folder, mmap=True)
    setup = trials.Setup(common.net_spec(cfg, data.X_train.shape[1]),
                         lr_search.schedule_for(cfg, 0.0, 0.0, 1), cfg.search.blas_threads,
                         cfg.search.early_stop.chance_tol)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = dataclasses.replace(cfg, tracking=dataclasses.replace(
            cfg.tracking, uri=f"sqlite:///{tmp}/mlflow.db"))
        with tracking.stage_run(cfg, "benchmark") as parent, \
                Scheduler(cfg, setup, data, folder, parent, cache=Path(tmp) / "cache") as s:
            start = time.perf_counter()
            rows, _, _ = lr_search.coarse_search(lr_search.Search(cfg, setup, data, s))
            seconds = time.perf_counter() - start
            startup = s.backend.startup_seconds if s.backend else 0.0
    return seconds, startup, len(rows)


def main() -> None:
    args = arguments()
    logging.basicConfig(level=logging.WARNING)
    overrides = [f"search.coarse.trials={args.trials}"] if args.trials else []
    base = config.load("params.yaml", overrides)
    print(f"coarse search: {base.search.coarse.trials} trials/round x {base.search.coarse.epochs}"
          f" epochs x {base.search.coarse.num_train} images, {backends.cores()} cores, "
          f"load average {os.getloadavg()[0]:.2f} at start")

    times = {}
    for backend in args.backends:
        for workers in args.workers:
            search = dataclasses.replace(base.search, backend=config.SearchBackend(backend),
                                         workers=workers)
            cfg = dataclasses.replace(base, search=search)
            runs = [coarse_seconds(cfg, args.data) for _ in range(args.repeat)]
            seconds, startup, count = min(runs)
            times[backend, workers] = seconds
            print(f"{backend:>6} {workers} worker(s): {seconds:7.1f} s for {count} trials "
                  f"(start-up {startup:.1f} s, trials {seconds - startup:.1f} s)", flush=True)

    for backend in args.backends:
        if (backend, 1) in times and (backend, 2) in times:
            print(f"{backend:>6} speedup, 2 workers over 1: "
                  f"{times[backend, 1] / times[backend, 2]:.2f}x")
    if ("local", 2) in times and ("ray", 2) in times:
        print(f"   ray overhead at 2 workers: {times['ray', 2] - times['local', 2]:+.1f} s "
              "over local")
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
