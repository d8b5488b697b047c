"""One search trial as an independent task: what determines it, how it runs, what it returns.

A trial is pure computation. Given the search's shared `Setup` (net, schedule, stopping rule),
its own `Trial` (stage, round, index, lr, reg, seed) and the arrays, `run_trial` returns the
same `Outcome`, bit for bit, wherever and whenever it runs: in the stage process, in a local
worker, in a Ray task, first or last. Two things make that so:

- the trial's generator is seeded from the search seed and the trial's own round and index,
  never drawn from a generator that other trials share, so finishing order cannot matter;
- BLAS runs with a fixed number of threads (`Setup.blas_threads`): OpenBLAS splits its sums
  differently with more threads, which changes the last bits of every loss.

Nothing here talks to MLflow: an outcome carries its metric points back to the stage process,
the only writer to the store (see pipeline.scheduler).
"""

import math
import os
import socket
import time
from dataclasses import dataclass, field, replace

import numpy as np
from threadpoolctl import threadpool_limits

from pipeline import net, solver


class StopTrial(Exception):
    """Raised from the epoch hook to end a hopeless trial; the message is the reason."""


@dataclass(frozen=True)
class Arrays:
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray


ARRAY_NAMES = ("X_train", "y_train", "X_val", "y_val")


@dataclass(frozen=True)
class Setup:
    """What every trial of one search shares; part of every trial's cache key."""

    spec: net.NetSpec
    schedule: solver.Schedule  # a template: each trial sets its own lr, reg, epochs
    blas_threads: int = 1
    chance_tol: float = 0.0  # see `stalled_at_chance`; 0 turns the rule off


@dataclass(frozen=True)
class Trial:
    """One point of the search; with the Setup and the data it fixes the outcome."""

    name: str  # "coarse_0_007", also the MLflow run name
    stage: str  # probe | coarse | fine
    round: int
    index: int
    lr: float
    reg: float
    epochs: int
    num_train: int
    seed: tuple[int, ...]  # keys of np.random.default_rng: search seed, stream, round, index
    max_steps: int | None = None
    early_stop: bool = True


@dataclass
class Outcome:
    status: str  # ok | diverged | stopped | failed
    reason: str = ""
    loss: list[float] = field(default_factory=list)  # every step, as solver.History has it
    train_acc: list[float] = field(default_factory=list)  # every epoch
    val_acc: list[float] = field(default_factory=list)
    diverged_at: int | None = None
    # MLflow points (key, value, step, unix ms): what the solver hooks saw, in order
    points: list[tuple[str, float, int, int]] = field(default_factory=list)
    started_ms: int = 0
    ended_ms: int = 0
    worker: str = ""  # host:pid that ran it
    attempts: int = 1
    cached: bool = False

    @property
    def seconds(self) -> float:
        return (self.ended_ms - self.started_ms) / 1000


def failed(attempts: int, reason: str) -> Outcome:
    """The outcome of a trial whose worker kept dying: no metrics, never a winner."""
    now = _now_ms()
    return Outcome("failed", f"{reason} ({attempts} attempts)", started_ms=now, ended_ms=now,
                   attempts=attempts)


def _now_ms() -> int:
    return int(time.time() * 1000)


def stalled_at_chance(loss: float, num_classes: int, tol: float) -> bool:
    """Loss still within `tol` of ln(C), the loss of uniform guessing.

    With a small init the loss can sit near ln 10 for a while and then fall, so a trial is
    judged on this only once, after its first epoch.
    """
    return tol > 0 and abs(loss - math.log(num_classes)) < tol


class _Recorder:
    """The solver hooks of one trial: collect MLflow points, apply the stopping rule."""

    def __init__(self, setup: Setup, trial: Trial):
        self.rule = trial.early_stop and trial.epochs > 1 and setup.chance_tol > 0
        self.num_classes = setup.spec.num_classes
        self.tol = setup.chance_tol
        self.loss: list[float] = []
        self.train_acc: list[float] = []
        self.val_acc: list[float] = []
        self.points: list[tuple[str, float, int, int]] = []

    def step(self, step: int, loss: float, ratios) -> None:
        self.loss.append(float(loss))
        self.points.append(("loss", float(loss), step, _now_ms()))

    def epoch(self, epoch: int, m: dict) -> None:
        now = _now_ms()
        for key in ("train_acc", "val_acc"):
            getattr(self, key).append(float(m[key]))
            self.points.append((key, float(m[key]), epoch, now))
        if self.rule and epoch == 0 and stalled_at_chance(m["loss"], self.num_classes, self.tol):
            raise StopTrial(f"loss {m['loss']:.4f} within {self.tol:g} of ln "
                            f"{self.num_classes} after the first epoch")


def run_trial(setup: Setup, trial: Trial, data: Arrays) -> Outcome:
    """Train one net for the trial; never raises for a bad lr, only for a bug."""
    started = _now_ms()
    record = _Recorder(setup, trial)
    schedule = replace(setup.schedule, lr=trial.lr, reg=trial.reg, epochs=trial.epochs,
                       max_steps=trial.max_steps)
    rng = np.random.default_rng(list(trial.seed))
    n = trial.num_train

    with threadpool_limits(limits=setup.blas_threads, user_api="blas"):
        params = net.init_params(setup.spec, rng)
        try:
            history = solver.train(params, setup.spec, data.X_train[:n], data.y_train[:n],
                                   data.X_val, data.y_val, schedule, rng,
                                   on_step=record.step, on_epoch=record.epoch)
        except StopTrial as stop:
            return _outcome(record, "stopped", str(stop), record.loss, started)

    if history.diverged:
        reason = f"loss {history.loss[-1]:.4g} exploded at step {history.diverged_at}"
        outcome = _outcome(record, "diverged", reason, history.loss, started)
        outcome.diverged_at = history.diverged_at
        return outcome
    return _outcome(record, "ok", "", history.loss, started)


def _outcome(record: _Recorder, status: str, reason: str, loss, started: int) -> Outcome:
    return Outcome(status, reason, loss=[float(v) for v in loss], train_acc=record.train_acc,
                   val_acc=record.val_acc, points=record.points, started_ms=started,
                   ended_ms=_now_ms(), worker=f"{socket.gethostname()}:{os.getpid()}")
