"""Mini-batch training of a net from pipeline.net: the loop the search and the train stage share.

The loop records what the lecture says to watch: the loss of every step, train and val
accuracy of every epoch, and the update/weight ratio of every weight matrix at every step
(norm of the update over norm of the weights, healthy near 1e-3). A loss that turns inf or
NaN, or grows far above where it started, stops the run as diverged instead of crashing.
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from pipeline import net, optim

# A loss this many times the first one means the run has left the basin for good.
EXPLODE_FACTOR = 3.0


@dataclass(frozen=True)
class Schedule:
    lr: float
    reg: float
    epochs: int
    batch_size: int = 200
    update_rule: str = "sgd_momentum"
    momentum: float = 0.9
    lr_decay: float = 1.0
    max_steps: int | None = None


@dataclass
class History:
    loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    ratios: dict[str, list[float]] = field(default_factory=dict)
    diverged_at: int | None = None
    best_val_acc: float = 0.0
    best_epoch: int = -1
    best_params: dict[str, np.ndarray] | None = None

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None


StepHook = Callable[[int, float, dict[str, float]], None]
EpochHook = Callable[[int, dict[str, float]], None]


def update_ratios(params, updates, names) -> dict[str, float]:
    ratios = {}
    for name in names:
        weight_norm = float(np.linalg.norm(params[name]))
        ratios[name] = float(np.linalg.norm(updates[name])) / max(weight_norm, 1e-12)
    return ratios


def _hyper(schedule: Schedule) -> dict:
    return {"momentum": schedule.momentum} if schedule.update_rule == "sgd_momentum" else {}


def _exploded(loss: float, first: float) -> bool:
    return not math.isfinite(loss) or loss > EXPLODE_FACTOR * first


def train(params, spec: net.NetSpec, X_train, y_train, X_val, y_val, schedule: Schedule,
          rng: np.random.Generator, on_step: StepHook | None = None,
          on_epoch: EpochHook | None = None, progress: str | None = None) -> History:
    """Train `params` in place; returns the history and a copy of the best-val params."""
    history = History(ratios={name: [] for name in net.weight_names(params)})
    states = {name: {} for name in params}
    steps_per_epoch = max(len(X_train) // schedule.batch_size, 1)
    lr = schedule.lr
    step = 0

    epochs = tqdm(range(schedule.epochs), desc=progress, unit="epoch", leave=False,
                  disable=None if progress else True)
    for epoch in epochs:
        # shuffle once per epoch; the last partial batch is dropped
        order = rng.permutation(len(X_train))
        epoch_start, first_step = time.perf_counter(), step

        for batch in range(steps_per_epoch):
            idx = order[batch * schedule.batch_size:(batch + 1) * schedule.batch_size]
            with np.errstate(over="ignore", invalid="ignore"):
                loss, grads = net.loss_and_grads(params, X_train[idx], y_train[idx],
                                                 schedule.reg, spec)
            first = history.loss[0] if history.loss else loss
            history.loss.append(loss)
            if _exploded(loss, first):
                history.diverged_at = step
                return history

            updates = optim.step(params, grads, states, schedule.update_rule, lr,
                                 **_hyper(schedule))
            ratios = update_ratios(params, updates, history.ratios)
            for name, ratio in ratios.items():
                history.ratios[name].append(ratio)
            if on_step:
                on_step(step, loss, ratios)

            step += 1
            if schedule.max_steps is not None and step >= schedule.max_steps:
                break

        # evaluate at the end of each epoch and keep the best-val weights
        train_acc = net.accuracy(params, X_train, y_train, spec)
        val_acc = net.accuracy(params, X_val, y_val, spec)
        history.train_acc.append(train_acc)
        history.val_acc.append(val_acc)
        if val_acc > history.best_val_acc or history.best_params is None:
            history.best_val_acc, history.best_epoch = val_acc, epoch
            history.best_params = {name: value.copy() for name, value in params.items()}
        if on_epoch:
            ratios = {name: float(np.mean(values[first_step:]))
                      for name, values in history.ratios.items()}
            on_epoch(epoch, {"loss": loss, "train_acc": train_acc, "val_acc": val_acc,
                             "lr": lr, "ratios": ratios,
                             "seconds": time.perf_counter() - epoch_start})
        epochs.set_postfix(loss=f"{loss:.3f}", val_acc=f"{val_acc:.3f}")

        lr *= schedule.lr_decay
        if schedule.max_steps is not None and step >= schedule.max_steps:
            break

    return history
