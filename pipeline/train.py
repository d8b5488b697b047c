"""Stage train: the chosen lr and reg on the full training split, then the test accuracy.

lr and reg come from results/lr_search/best.json unless `train.lr` / `train.reg` are set.
To MLflow: the loss of every step, train/val accuracy of every epoch and the update/weight
ratio of every weight matrix at every step. To DVC: the best-val checkpoint
(models/best.npz), results/train/metrics.json and the history CSVs behind `dvc plots`.
"""

import csv
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm.contrib.logging import logging_redirect_tqdm

from pipeline import common, config, diagnose, net, solver, tracking
from pipeline.io import read_json, write_json
from pipeline.log import setup

BEST = Path("results/lr_search/best.json")
CHECKPOINT = Path("models/best.npz")
OUT = Path("results/train")


def chosen_hyperparams(cfg: config.Config) -> tuple[float, float, str]:
    t = cfg.train
    if t.lr is not None and t.reg is not None:
        return t.lr, t.reg, "config"
    if not BEST.is_file():
        sys.exit(f"train: {BEST} is missing; run `dvc repro lr_search` or set train.lr "
                 "and train.reg")
    best = read_json(BEST)
    lr = t.lr if t.lr is not None else best["lr"]
    reg = t.reg if t.reg is not None else best["reg"]
    return lr, reg, "lr_search" if t.lr is None and t.reg is None else "config + lr_search"


def save_checkpoint(params, spec: net.NetSpec, path: Path = CHECKPOINT,
                    state: dict | None = None) -> None:
    """Params, the BN running averages (`state`, listed by name) and the spec as JSON."""
    state = state or {}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, spec=json.dumps(asdict(spec)), state_names=json.dumps(sorted(state)),
             **params, **state)
    tmp.rename(path)


def load_model(path: Path = CHECKPOINT) -> tuple[dict, dict, net.NetSpec]:
    """params, state (BN running averages; {} without BN) and spec of a checkpoint."""
    with np.load(path) as saved:
        spec = json.loads(str(saved["spec"]))
        state_names = set(json.loads(str(saved["state_names"]))) \
            if "state_names" in saved.files else set()
        arrays = {k: saved[k] for k in saved.files if k not in ("spec", "state_names")}
    spec["hidden_dims"] = tuple(spec["hidden_dims"])
    params = {k: v for k, v in arrays.items() if k not in state_names}
    state = {k: v for k, v in arrays.items() if k in state_names}
    return params, state, net.NetSpec(**spec)


def load_checkpoint(path: Path = CHECKPOINT) -> tuple[dict, net.NetSpec]:
    params, _, spec = load_model(path)
    return params, spec


def starting_point(cfg: config.Config, spec: net.NetSpec) -> tuple[dict, dict, int, str]:
    """params, state, the first layer that trains, and where they came from.

    A fresh init of `model`, or with finetune.checkpoint the saved net, whose architecture
    must be the one `model` describes; finetune.last_layer_only then trains the scores
    layer alone, the layers below it a fixed feature extractor.
    """
    f = cfg.finetune
    if f.checkpoint is None:
        return net.init_params(spec, common.rng(cfg, "train", 0)), net.init_state(spec), 1, \
            f"init {spec.init}"
    path = Path(f.checkpoint)
    if not path.is_file():
        sys.exit(f"train: finetune.checkpoint {path} is missing; copy a models/best.npz there")
    params, state, saved = load_model(path)
    differences = net.architecture_differences(saved, spec)
    if differences:
        sys.exit(f"train: fine-tuning needs the architecture of {path}, but model differs "
                 f"({'; '.join(differences)})")
    if spec.batchnorm and not state:
        sys.exit(f"train: {path} has no batchnorm running averages")
    train_from = spec.num_layers if f.last_layer_only else 1
    return params, state, train_from, f"{path}, layers {train_from}..{spec.num_layers}"


def write_csv(path: Path, header: list[str], rows) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    tmp.rename(path)


def write_history(history: solver.History, folder: Path = OUT / "history") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    names = list(history.ratios)
    write_csv(folder / "loss.csv", ["step", "loss"], enumerate(history.loss))
    write_csv(folder / "accuracy.csv", ["epoch", "train_acc", "val_acc"],
              ((e, tr, va) for e, (tr, va) in
               enumerate(zip(history.train_acc, history.val_acc), start=1)))
    write_csv(folder / "update_ratio.csv", ["step", *names],
              ((step, *(history.ratios[n][step] for n in names))
               for step in range(len(history.ratios[names[0]]))))


def epoch_line(log, epochs: int):
    """One compact line per epoch: loss, accuracies, lr, mean update/weight ratios, time."""

    def report(epoch: int, m: dict) -> None:
        ratios = " ".join(f"{name} {r:.1e}" for name, r in m["ratios"].items())
        log.info("epoch %3d/%d  loss %.3f  train %.3f  val %.3f  lr %.2e  ratio %s  %.1fs",
                 epoch + 1, epochs, m["loss"], m["train_acc"], m["val_acc"], m["lr"],
                 ratios, m["seconds"])

    return report


def main() -> None:
    cfg = config.from_argv()
    log = setup("train")
    start = time.perf_counter()

    X_train, y_train, X_val, y_val, X_test, y_test = common.load_split(
        cfg, "X_train", "y_train", "X_val", "y_val", "X_test", "y_test")
    lr, reg, source = chosen_hyperparams(cfg)
    spec = common.net_spec(cfg, X_train.shape[1])
    t, o = cfg.train, cfg.optim
    schedule = solver.Schedule(lr=lr, reg=reg, epochs=t.epochs, batch_size=t.batch_size,
                               update_rule=o.update_rule.value, momentum=o.momentum,
                               beta1=o.beta1, beta2=o.beta2, eps=o.eps, lr_decay=t.lr_decay)
    log.info("lr %.3g, reg %.3g (from %s), %d epochs of %d images, %s", lr, reg, source,
             t.epochs, len(X_train), o.update_rule.value)

    with tracking.stage_run(cfg, "train") as run:
        tracking.mlflow.log_params({"chosen.lr": lr, "chosen.reg": reg,
                                    "chosen.source": source})
        buffer = tracking.MetricBuffer(run.info.run_id, cfg.tracking.flush_every)
        params, state, train_from, start_from = starting_point(cfg, spec)
        log.info("starting from %s", start_from)
        report = epoch_line(log, t.epochs)

        def on_step(step, loss, ratios):
            buffer.log({"train/loss": loss,
                        **{f"update_ratio/{name}": r for name, r in ratios.items()}}, step)

        def on_epoch(epoch, m):
            buffer.log({"train/acc": m["train_acc"], "val/acc": m["val_acc"], "lr": m["lr"]},
                       epoch)
            report(epoch, m)

        loop_start = time.perf_counter()
        with logging_redirect_tqdm():
            history = solver.train(params, spec, X_train, y_train, X_val, y_val, schedule,
                                   common.rng(cfg, "train", 1), on_step=on_step,
                                   on_epoch=on_epoch, progress="train", state=state,
                                   train_from=train_from)
        buffer.flush()
        loop_seconds = time.perf_counter() - loop_start
        if history.diverged:
            tracking.mlflow.set_tag("status", "diverged")
            sys.exit(f"train failed: the loss diverged at step {history.diverged_at} "
                     f"(loss {history.loss[-1]}) with lr {lr:.3g}, reg {reg:.3g}; lower "
                     "train.lr. No checkpoint or metrics were written.")

        test_acc = net.accuracy(history.best_params, X_test, y_test, spec,
                                state=history.best_state)
        metrics = {"test_acc": test_acc, "best_val_acc": history.best_val_acc,
                   "best_epoch": history.best_epoch + 1, "final_train_acc": history.train_acc[-1],
                   "final_loss": history.loss[-1], "lr": lr, "reg": reg}
        # a frozen weight's ratio is 0 by design, not a sign of a low lr
        trained_ratios = {name: r for name, r in history.ratios.items()
                          if int(name[1:]) >= train_from}
        findings = diagnose.diagnose(history.loss, history.train_acc, history.val_acc,
                                     trained_ratios)
        save_checkpoint(history.best_params, spec, state=history.best_state)
        write_history(history)
        write_json(OUT / "metrics.json", metrics)
        write_json(OUT / "diagnosis.json", [vars(f) for f in findings])
        tracking.mlflow.set_tag("diagnosis", diagnose.names(findings))

        overhead = buffer.seconds / loop_seconds
        tracking.mlflow.log_metrics({"test/acc": test_acc, "best_val_acc": history.best_val_acc,
                                     "mlflow_overhead_fraction": overhead})
        tracking.mlflow.log_artifact(str(CHECKPOINT))

    for finding in findings:
        log.info("diagnosis: %s", finding.message)
    log.info("test accuracy %.4f (best val %.4f at epoch %d); %d MLflow points took %.1f s "
             "of a %.1f s loop (%.1f %%); stage %.0f s", test_acc, history.best_val_acc,
             history.best_epoch + 1, buffer.sent, buffer.seconds, loop_seconds,
             100 * overhead, time.perf_counter() - start)


if __name__ == "__main__":
    main()
