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
    momentum: float = 0.9  # sgd_momentum, nesterov
    beta1: float = 0.9  # adam
    beta2: float = 0.999  # adam
    eps: float = 1e-8  # adam
    lr_decay: float = 1.0
    max_steps: int | None = None

    def hyper(self) -> dict[str, float]:
        """The hyperparameters of the update rule, by name; lr aside."""
        return {name: getattr(self, name) for name in optim.HYPERPARAMETERS[self.update_rule]}


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
    best_state: dict[str, np.ndarray] | None = None  # BN running averages of best_params

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None


Arrays = dict[str, np.ndarray]
StepHook = Callable[[int, float, dict[str, float]], None]
EpochHook = Callable[[int, dict[str, float]], None]


def update_ratios(params: Arrays, updates: Arrays, names) -> dict[str, float]:
    """Norm of the update over norm of the weights, per name; 0 for a frozen weight."""
    ratios = {}
    for name in names:
        if name not in updates:
            ratios[name] = 0.0
            continue
        weight_norm = float(np.linalg.norm(params[name]))
        ratios[name] = float(np.linalg.norm(updates[name])) / max(weight_norm, 1e-12)
    return ratios


def gradients(params: Arrays, X: np.ndarray, y: np.ndarray, spec: net.NetSpec, reg: float, *,
              state: Arrays | None = None, rng: np.random.Generator | None = None,
              train_from: int = 1) -> tuple[float, Arrays]:
    """Loss and grads of one training batch, in train mode; running averages move."""
    # a diverging run overflows on its way to inf; _exploded reports it, numpy need not
    with np.errstate(over="ignore", invalid="ignore"):
        return net.loss_and_grads(params, X, y, reg, spec, mode="train", state=state, rng=rng,
                                  train_from=train_from)


def apply_update(params: Arrays, grads: Arrays, states: dict, schedule: Schedule,
                 lr: float) -> Arrays:
    """One step of the update rule on the params that have grads (the trained ones)."""
    trained = {name: p for name, p in params.items() if name in grads}
    return optim.step(trained, grads, states, schedule.update_rule, lr, **schedule.hyper())


def _exploded(loss: float, first: float) -> bool:
    return not math.isfinite(loss) or loss > EXPLODE_FACTOR * first


def _copy(arrays: Arrays) -> Arrays:
    return {name: value.copy() for name, value in arrays.items()}


def train(params, spec: net.NetSpec, X_train, y_train, X_val, y_val, schedule: Schedule,
          rng: np.random.Generator, on_step: StepHook | None = None,
          on_epoch: EpochHook | None = None, progress: str | None = None, *,
          state: Arrays | None = None, train_from: int = 1) -> History:
    """Train `params` in place; returns the history and a copy of the best-val params.

    `state` holds the BN running averages (a fresh one when None; moved in place).
    `train_from` > 1 freezes the layers below it (e.g. spec.num_layers: the last layer only).
    `rng` shuffles; dropout masks come from a generator spawned from it, only when dropout is
    on, so a net without dropout sees exactly the shuffles it always did.
    """
    if state is None:
        state = net.init_state(spec, params["W1"].dtype)
    dropout_rng = rng.spawn(1)[0] if spec.dropout else None
    history = History(ratios={name: [] for name in net.weight_names(params)})
    states = {}
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
            loss, grads = gradients(params, X_train[idx], y_train[idx], spec, schedule.reg,
                                    state=state, rng=dropout_rng, train_from=train_from)
            first = history.loss[0] if history.loss else loss
            history.loss.append(loss)
            if _exploded(loss, first):
                history.diverged_at = step
                return history

            updates = apply_update(params, grads, states, schedule, lr)
            ratios = update_ratios(params, updates, history.ratios)
            for name, ratio in ratios.items():
                history.ratios[name].append(ratio)
            if on_step:
                on_step(step, loss, ratios)

            step += 1
            if schedule.max_steps is not None and step >= schedule.max_steps:
                break

        # evaluate at the end of each epoch and keep the best-val weights
        train_acc = net.accuracy(params, X_train, y_train, spec, state=state)
        val_acc = net.accuracy(params, X_val, y_val, spec, state=state)
        history.train_acc.append(train_acc)
        history.val_acc.append(val_acc)
        if val_acc > history.best_val_acc or history.best_params is None:
            history.best_val_acc, history.best_epoch = val_acc, epoch
            history.best_params, history.best_state = _copy(params), _copy(state)
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
