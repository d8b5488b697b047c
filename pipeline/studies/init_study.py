"""Stage init_study: how initialisation and activation shape a deep net, layer by layer.

A net of `study.init.depth` hidden layers of `study.init.width` units is fed a batch of
unit-Gaussian data (and a batch of preprocessed CIFAR-10 images). For every init and every
activation, one forward and one backward pass give per layer: mean and std of the
activations, std of the gradient reaching them, the fractions of saturated outputs, of
inactive outputs and of dead units, a histogram, and the variance of the pre-activations next
to what the product rule and Xavier's argument predict (see layer_stats). The same weights
are used for every activation, so the activation is the only difference between two rows.

An all-zero net is trained for a few SGD steps beside a small random one: its units stay
identical, which is why weights must start random.

Outputs in results/init_study/: layers.csv, histograms.csv, symmetry.csv, summary.json
(metrics), plots/*.csv (wide tables behind `dvc plots`), figures/*.png; the figures and
tables also go to MLflow as artifacts.
"""

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import common, config, net, optim, tracking
from pipeline.io import atomic_dir, write_json
from pipeline.log import setup
from pipeline.studies import figures, tables
from pipeline.studies.layer_stats import BOUNDS, COLUMNS, histograms, layer_rows
from pipeline.studies.propagation import (
    LINEAR,
    activation_of,
    distinct_units,
    study_activations,
    study_spec,
    trace,
)

OUT = Path("results/init_study")
NUM_CLASSES = 10
# The symmetry check compares weights, which any batch keeps identical; a small one is cheap.
SYMMETRY_SAMPLES = 100
KEYS = ["input", "init", "activation"]


@dataclass(frozen=True)
class Batch:
    name: str
    X: np.ndarray  # (N, D) float64
    y: np.ndarray  # (N,) labels for the loss at the top of the net


@dataclass
class Results:
    layers: list[dict]
    histograms: list[dict]
    symmetry: list[dict]


def batches(cfg: config.Config) -> list[Batch]:
    """The unit-Gaussian batch, and the CIFAR-10 batch unless study.init.cifar_images is 0."""
    s = cfg.study.init
    rng = common.rng(cfg, "init_study", 0)
    found = [Batch("gaussian", rng.standard_normal((s.num_samples, s.input_dim)),
                   rng.integers(0, NUM_CLASSES, s.num_samples))]
    if s.cifar_images:
        X, y = common.load_split(cfg, "X_train", "y_train")
        found.append(Batch("cifar10", X[:s.cifar_images].astype(np.float64),
                           y[:s.cifar_images]))
    return found


def deep_spec(s: config.InitStudyConfig, input_dim: int, init: str,
              activation: str) -> net.NetSpec:
    spec = net.NetSpec(input_dim=input_dim, hidden_dims=(s.width,) * s.depth,
                       num_classes=NUM_CLASSES, init=init, weight_scale=s.weight_scale)
    return study_spec(spec, activation)


def activations(s: config.InitStudyConfig) -> list[str]:
    return list(s.activations) or study_activations()


def measure(cfg: config.Config, found: list[Batch], log) -> Results:
    """Every (input, init, activation): per-layer statistics and histograms."""
    s = cfg.study.init
    results = Results([], [], [])
    for b, batch in enumerate(found):
        for i, init in enumerate(s.inits):
            for activation in activations(s):
                spec = deep_spec(s, batch.X.shape[1], init.value, activation)
                # one generator per (input, init): every activation gets the same weights,
                # but maxout, whose layers have twice the columns
                params = net.init_params(spec, common.rng(cfg, "init_study", 1, b, i),
                                         np.float64)
                # unit_gaussian weights drive exp() in sigmoid and elu past the float range
                with np.errstate(over="ignore", under="ignore"):
                    t = trace(params, batch.X, batch.y, activation_of(spec, activation))
                key = {"input": batch.name, "init": init.value, "activation": activation}
                results.layers += [{**key, **row} for row in
                                   layer_rows(t, params, activation, s.saturation)]
                results.histograms += [{**key, **row} for row in histograms(t, s.bins)]
            log.info("%-8s %-13s done", batch.name, init.value)
    return results


def symmetry(cfg: config.Config, batch: Batch) -> list[dict]:
    """Distinct units per layer over zero_steps SGD steps, all-zero vs the first init."""
    s = cfg.study.init
    X, y = batch.X[:SYMMETRY_SAMPLES], batch.y[:SYMMETRY_SAMPLES]
    rows = []
    for activation in (a for a in activations(s) if a != LINEAR):
        for init in ("zeros", s.inits[0].value):
            spec = deep_spec(s, X.shape[1], init, activation)
            params = net.init_params(spec, common.rng(cfg, "init_study", 2), np.float64)
            rows += _train_and_count(params, spec, X, y, s)
    return rows


def _train_and_count(params, spec, X, y, s) -> list[dict]:
    rows, states = [], {}
    for step in range(s.zero_steps + 1):
        if step:
            _, grads = net.loss_and_grads(params, X, y, 0.0, spec)
            optim.step(params, grads, states, "sgd", s.zero_lr)
        for layer, units in enumerate(spec.hidden_dims, start=1):
            W, b = params[f"W{layer}"], params[f"b{layer}"]
            rows.append({"activation": spec.activation, "init": spec.init, "step": step,
                         "layer": layer, "units": units,
                         "distinct_units": distinct_units(W, b, units),
                         "weight_norm": float(np.linalg.norm(W))})
    return rows


def summary(rows: list[dict]) -> dict:
    """Per input / init / activation: first and last layer std, worst saturation and death."""
    found: dict = {}
    for row in rows:
        entry = found.setdefault(row["input"], {}).setdefault(row["init"], {}).setdefault(
            row["activation"], {"dead_max": 0.0})
        if row["layer"] == 1:
            entry["std_first"] = _round(row["act_std"])
        entry["std_last"] = _round(row["act_std"])
        entry["dead_max"] = max(entry["dead_max"], _round(row["dead"]))
        if row["activation"] in BOUNDS:
            entry["saturated_max"] = max(entry.get("saturated_max", 0.0),
                                         _round(row["saturated"]))
    return found


def _round(value: float) -> float:
    """6 significant digits, as in the tables: the last bits may differ between runs."""
    return float(f"{value:.6g}")


def series(row: dict) -> str:
    return f"{row['init']}_{row['activation']}"


def write_tables(folder: Path, results: Results) -> None:
    tables.write_csv(folder / "layers.csv", results.layers, KEYS + COLUMNS)
    tables.write_csv(folder / "histograms.csv", results.histograms)
    tables.write_csv(folder / "symmetry.csv", results.symmetry)
    # dvc plots draws linear axes only: stds that span 20 decades go in as log10
    gaussian = [{**row, "log10_act_std": _log10(row["act_std"]),
                 "log10_grad_std": _log10(row["grad_std"]),
                 "var_ratio": row["var_measured"] / row["var_xavier"]}
                for row in results.layers if row["input"] == "gaussian"]
    bounded = [row for row in gaussian if row["activation"] in BOUNDS]
    for value, rows in (("log10_act_std", gaussian), ("log10_grad_std", gaussian),
                        ("var_ratio", gaussian), ("saturated", bounded)):
        wide = tables.pivot(rows, "layer", value, series)
        tables.write_csv(folder / "plots" / f"{value}.csv", wide, None if wide else ["layer"])


def _log10(value: float) -> float:
    return math.log10(value) if value > 0 else float("nan")


def main() -> None:
    cfg = config.from_argv()
    log = setup("init_study")
    start = time.perf_counter()

    with tracking.stage_run(cfg, "init_study"):
        found = batches(cfg)
        results = measure(cfg, found, log)
        results.symmetry = symmetry(cfg, found[0])
        numbers = summary(results.layers)
        with atomic_dir(OUT) as tmp:
            write_tables(tmp, results)
            write_json(tmp / "summary.json", numbers)
            figures.init_figures(tmp / "figures", results)
        tracking.mlflow.log_artifacts(str(OUT), "init_study")
        tracking.mlflow.log_metrics(_flat_metrics(numbers))

    for line in report_lines(results.layers):
        log.info(line)
    log.info("%d layer rows, %d figures in %.0f s", len(results.layers),
             len(list((OUT / "figures").glob("*.png"))), time.perf_counter() - start)


def _flat_metrics(numbers: dict) -> dict[str, float]:
    return {f"{source}/{init}/{activation}/{key}": value
            for source, inits in numbers.items() for init, acts in inits.items()
            for activation, entry in acts.items() for key, value in entry.items()}


def report_lines(rows: list[dict]) -> list[str]:
    """The lecture's headline cases on the unit-Gaussian input, one line per layer."""
    lines = []
    for init, activation in (("xavier", "tanh"), ("he", "relu")):
        picked = [r for r in rows if (r["input"], r["init"], r["activation"]) ==
                  ("gaussian", init, activation)]
        for r in picked:
            lines.append(f"{init}/{activation} layer {r['layer']:2d}: mean {r['act_mean']:+.3f} "
                         f"std {r['act_std']:.3f} grad std {r['grad_std']:.2e} "
                         f"Var(z) {r['var_measured']:.3f} vs Xavier {r['var_xavier']:.3f}")
    return lines


if __name__ == "__main__":
    main()
