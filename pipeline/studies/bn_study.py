"""Stage bn_study: batch normalization makes a deep net trainable whatever its weight scale.

A deep ReLU net (`study.bn.hidden_dims`, 8 x 50 by default) is trained on the first
`study.bn.num_train` CIFAR-10 training images, with and without batch normalization, from a
gaussian init whose std sweeps a log range (`study.bn.weight_scales`, `num_scales` points);
then, at one scale, across a few learning rates. All runs start from the same draws (scaled)
and see the same batches, so the weight scale or lr, and BN, are the only differences.

Each run's history is read by pipeline.diagnose; its verdicts go to the run's MLflow tags and
into the report. Outputs in results/bn_study/: runs.csv (final accuracies and losses),
curves.csv (loss per step), diagnosis.json, metrics.json, plots/{scale,lr}.csv (behind
`dvc plots`) and figures/*.png, also logged to MLflow.
"""

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pipeline import common, config, diagnose, net, solver, tracking
from pipeline.io import atomic_dir, write_json
from pipeline.log import setup
from pipeline.studies import figures, tables

OUT = Path("results/bn_study")
# Val accuracy of twice chance: the net has learned something.
TRAINED = 0.2
RUN_COLUMNS = ["sweep", "batchnorm", "weight_scale", "lr", "status", "train_acc", "val_acc",
               "train_loss", "val_loss", "diagnosis"]


@dataclass(frozen=True)
class Run:
    sweep: str  # "scale" or "lr": which of the two sweeps the run belongs to
    batchnorm: bool
    weight_scale: float
    lr: float

    @property
    def name(self) -> str:
        kind = "bn" if self.batchnorm else "plain"
        return f"{self.sweep}/{kind}/scale {self.weight_scale:.1e}/lr {self.lr:.0e}"


@dataclass(frozen=True)
class Data:
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray


@dataclass
class Outcome:
    row: dict
    loss: list[float]
    findings: list[diagnose.Finding]
    points: list[tuple[str, float, int, int]]  # MLflow (key, value, step, time in ms)
    start_ms: int
    end_ms: int


def planned_runs(s: config.BnStudyConfig) -> list[Run]:
    """The weight-scale sweep, then the lr comparison; plain and BN side by side."""
    low, high = (math.log10(v) for v in s.weight_scales)
    scales = [float(v) for v in np.logspace(low, high, s.num_scales)]
    return ([Run("scale", bn, scale, s.lr) for scale in scales for bn in (False, True)]
            + [Run("lr", bn, s.lr_weight_scale, lr) for lr in s.lrs for bn in (False, True)])


def spec_for(s: config.BnStudyConfig, run: Run, input_dim: int) -> net.NetSpec:
    return net.NetSpec(input_dim=input_dim, hidden_dims=tuple(s.hidden_dims),
                       activation=s.activation.value, init="gaussian",
                       weight_scale=run.weight_scale, batchnorm=run.batchnorm)


def schedule_for(cfg: config.Config, run: Run) -> solver.Schedule:
    s, o = cfg.study.bn, cfg.optim
    return solver.Schedule(lr=run.lr, reg=0.0, epochs=s.epochs, batch_size=s.batch_size,
                           update_rule=s.update_rule.value, momentum=o.momentum,
                           beta1=o.beta1, beta2=o.beta2, eps=o.eps)


def train_run(cfg: config.Config, run: Run, data: Data) -> Outcome:
    """Train one net; final accuracies and losses in test mode, then the diagnosis."""
    spec = spec_for(cfg.study.bn, run, data.X_train.shape[1])
    params = net.init_params(spec, common.rng(cfg, "bn_study", 0))
    state = net.init_state(spec)
    points: list[tuple[str, float, int, int]] = []

    def on_step(step, loss, ratios):
        points.append(("train/loss", loss, step, _now_ms()))

    def on_epoch(epoch, m):
        points.extend([("train/acc", m["train_acc"], epoch, _now_ms()),
                       ("val/acc", m["val_acc"], epoch, _now_ms())])

    start_ms = _now_ms()
    history = solver.train(params, spec, data.X_train, data.y_train, data.X_val, data.y_val,
                           schedule_for(cfg, run), common.rng(cfg, "bn_study", 1),
                           on_step=on_step, on_epoch=on_epoch, state=state)
    findings = diagnose.diagnose(history.loss, history.train_acc, history.val_acc,
                                 history.ratios)
    row = {"sweep": run.sweep, "batchnorm": run.batchnorm, "weight_scale": run.weight_scale,
           "lr": run.lr, "status": "diverged" if history.diverged else "ok",
           **evaluate(params, spec, state, data), "diagnosis": diagnose.names(findings)}
    return Outcome(row, history.loss, findings, points, start_ms, _now_ms())


def train_all(cfg: config.Config, runs: list[Run], data: Data, log) -> list[Outcome]:
    """Every run; one already trained in the other sweep (same BN, scale and lr) is reused."""
    done: dict[tuple, Outcome] = {}
    outcomes = []
    for run in runs:
        key = (run.batchnorm, run.weight_scale, run.lr)
        if key not in done:
            done[key] = train_run(cfg, run, data)
        outcomes.append(replace(done[key], row={**done[key].row, "sweep": run.sweep}))
        r = outcomes[-1].row
        log.info("%-32s val %.3f train %.3f loss %-9.3g %s", run.name, r["val_acc"],
                 r["train_acc"], r["train_loss"], figures.short_diagnosis(r["diagnosis"]))
    return outcomes


def evaluate(params, spec: net.NetSpec, state, data: Data) -> dict[str, float]:
    # a diverged net holds inf or nan; its loss is nan and its accuracy about chance
    with np.errstate(over="ignore", invalid="ignore"):
        return {
            "train_acc": net.accuracy(params, data.X_train, data.y_train, spec, state=state),
            "val_acc": net.accuracy(params, data.X_val, data.y_val, spec, state=state),
            "train_loss": net.data_loss(params, data.X_train, data.y_train, spec, state=state),
            "val_loss": net.data_loss(params, data.X_val, data.y_val, spec, state=state),
        }


def _now_ms() -> int:
    return int(time.time() * 1000)


def summary(rows: list[dict]) -> dict:
    """Per sweep, plain and BN: how many settings trained (val acc >= TRAINED), over which
    range, and the best val accuracy."""
    found: dict = {}
    for sweep, key in (("scale", "weight_scale"), ("lr", "lr")):
        for kind, bn in (("plain", False), ("bn", True)):
            picked = [r for r in rows if r["sweep"] == sweep and r["batchnorm"] == bn]
            trained = [r[key] for r in picked if r["val_acc"] >= TRAINED]
            found.setdefault(sweep, {})[kind] = {
                "trained": len(trained), "of": len(picked),
                "trained_low": min(trained, default=None),
                "trained_high": max(trained, default=None),
                "best_val_acc": max((r["val_acc"] for r in picked), default=None),
            }
    return found


def wide(rows: list[dict], sweep: str, key: str) -> list[dict]:
    """One row per weight scale (or lr): train and val accuracy of plain and BN nets."""
    out: dict = {}
    for r in (r for r in rows if r["sweep"] == sweep):
        kind = "bn" if r["batchnorm"] else "plain"
        entry = out.setdefault(r[key], {key: r[key], f"log10_{key}": math.log10(r[key])})
        entry[f"{kind}_train_acc"], entry[f"{kind}_val_acc"] = r["train_acc"], r["val_acc"]
    return [out[k] for k in sorted(out)]


def curve_rows(outcomes: list[Outcome]) -> list[dict]:
    return [{**{k: o.row[k] for k in ("sweep", "batchnorm", "weight_scale", "lr")},
             "step": step, "loss": loss}
            for o in outcomes for step, loss in enumerate(o.loss)]


def write_outputs(folder: Path, outcomes: list[Outcome], numbers: dict,
                  s: config.BnStudyConfig) -> None:
    rows, curves = [o.row for o in outcomes], curve_rows(outcomes)
    tables.write_csv(folder / "runs.csv", rows, RUN_COLUMNS)
    tables.write_csv(folder / "curves.csv", curves)
    tables.write_csv(folder / "plots" / "scale.csv", wide(rows, "scale", "weight_scale"))
    tables.write_csv(folder / "plots" / "lr.csv", wide(rows, "lr", "lr"))
    write_json(folder / "metrics.json", numbers)
    write_json(folder / "diagnosis.json",
               [{"run": Run(o.row["sweep"], o.row["batchnorm"], o.row["weight_scale"],
                            o.row["lr"]).name, "findings": [vars(f) for f in o.findings]}
                for o in outcomes])
    figures.bn_figures(folder / "figures", rows, curves, describe(s))


def describe(s: config.BnStudyConfig) -> str:
    """"8 x 50 relu net", or "relu net 100-50" when the widths differ."""
    dims = s.hidden_dims
    if len(set(dims)) == 1:
        return f"{len(dims)} x {dims[0]} {s.activation.value} net"
    return f"{s.activation.value} net {'-'.join(map(str, dims))}"


def log_runs(parent, outcomes: list[Outcome], runs: list[Run]) -> None:
    """One nested MLflow run per training run: loss per step, accuracies, the verdicts."""
    tags = tracking.run_tags("bn_study")
    for run, o in zip(runs, outcomes):
        finals = [(f"final/{k}", o.row[k], 0, o.end_ms) for k in
                  ("train_acc", "val_acc", "train_loss", "val_loss")]
        tracking.log_child_run(
            parent, run.name,
            {"sweep": run.sweep, "batchnorm": run.batchnorm, "weight_scale": run.weight_scale,
             "lr": run.lr},
            {**tags, "diagnosis": o.row["diagnosis"], "status": o.row["status"]},
            o.points + finals, o.start_ms, o.end_ms)


def main() -> None:
    cfg = config.from_argv()
    log = setup("bn_study")
    start = time.perf_counter()
    s = cfg.study.bn

    X_train, y_train, X_val, y_val = common.load_split(cfg, "X_train", "y_train", "X_val",
                                                       "y_val")
    data = Data(X_train[:s.num_train], y_train[:s.num_train], X_val, y_val)
    runs = planned_runs(s)
    log.info("%d runs of %d epochs on %d images, %s lr %g", len(runs), s.epochs,
             len(data.X_train), s.update_rule.value, s.lr)

    with tracking.stage_run(cfg, "bn_study") as parent:
        outcomes = train_all(cfg, runs, data, log)
        numbers = summary([o.row for o in outcomes])
        with atomic_dir(OUT) as tmp:
            write_outputs(tmp, outcomes, numbers, s)
        log_runs(parent, outcomes, runs)
        tracking.mlflow.log_artifacts(str(OUT), "bn_study")
        tracking.mlflow.log_metrics(_flat(numbers))

    for sweep, kinds in numbers.items():
        for kind, n in kinds.items():
            log.info("%-5s %-5s trained %d of %d (val acc >= %.1f) from %s to %s, best val %s",
                     sweep, kind, n["trained"], n["of"], TRAINED, n["trained_low"],
                     n["trained_high"], n["best_val_acc"])
    log.info("%d runs in %.0f s", len(runs), time.perf_counter() - start)


def _flat(numbers: dict) -> dict[str, float]:
    return {f"{sweep}/{kind}/{key}": value for sweep, kinds in numbers.items()
            for kind, entry in kinds.items() for key, value in entry.items()
            if value is not None}


if __name__ == "__main__":
    main()
