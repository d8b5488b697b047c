"""Stage sanity: the checks to pass before any tuning, and the CI gate.

1. initial loss: with no regularization and small weights, the softmax loss of a 10-class
   net is ln 10, since every class gets probability 1/10;
2. regularization raises that loss;
3. a tiny subset is overfit to 100 % train accuracy;
4. analytic gradients match centred numeric ones in float64.

It writes results/sanity/report.json (per check: value, bound, passed) and exits non-zero
naming every failed check.
"""

import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from pipeline import common, config, gradcheck, net, solver, tracking
from pipeline.io import write_json
from pipeline.log import setup

REPORT = Path("results/sanity/report.json")


def _check(value: float, bound: str, passed: bool) -> dict:
    return {"value": value, "bound": bound, "passed": bool(passed)}


def initial_loss_checks(params, spec, X, y, s: config.SanityConfig) -> dict:
    # the training loss the first step sees (batch statistics for BN), with one dropout mask
    # for both, so the two losses differ by the penalty alone
    def dropout():
        return np.random.default_rng(0) if spec.dropout else None

    loss = net.data_loss(params, X, y, spec, mode="train", rng=dropout())
    loss_reg, _ = net.loss_and_grads(params, X, y, s.reg, spec, rng=dropout())
    ln10 = math.log(spec.num_classes)
    return {
        "initial_loss": _check(loss, f"|loss - ln {spec.num_classes}| <= {s.loss_tol}",
                               abs(loss - ln10) <= s.loss_tol),
        "regularization_raises_loss": _check(loss_reg - loss, f"> 0 (reg = {s.reg:g})",
                                             loss_reg > loss),
    }


def overfit_check(spec, X, y, s: config.SanityConfig, rng) -> dict:
    spec = replace(spec, dropout=0.0)  # no regularization of any kind, as reg = 0 below
    params = net.init_params(spec, rng)
    schedule = solver.Schedule(lr=s.overfit_lr, reg=0.0, epochs=s.overfit_epochs,
                               batch_size=len(X), update_rule="sgd_momentum")
    history = solver.train(params, spec, X, y, X, y, schedule, rng)
    train_acc = history.train_acc[-1] if history.train_acc else 0.0
    return _check(train_acc, f"== 1.0 on {len(X)} images after {s.overfit_epochs} steps",
                  train_acc == 1.0)


def gradient_checks(spec, X, y, s: config.SanityConfig, rng) -> dict:
    params = {k: v.astype(np.float64) for k, v in net.init_params(spec, rng).items()}
    checks = {}
    for name, reg in (("no_reg", 0.0), ("reg", s.reg)):
        result = gradcheck.check_net_grads(params, X.astype(np.float64), y, reg, spec, rng,
                                           num_checks=s.grad_checks)
        excess = result.excess_error()
        worst = max((e for e in excess.values() if e == e), default=float("nan"))
        bound = (f"max relative error beyond float64 rounding noise "
                 f"(2 x {result.rounding:.1e}) <= {s.grad_tol:g}")
        checks[f"gradient_{name}"] = {
            **_check(worst, bound, result.passed(s.grad_tol) and result.checked > 0),
            "per_param": excess,
            "raw_max_rel_error": result.max_rel_error,
            "kinks_skipped": result.kinks,
            "checked": result.checked,
        }
    return checks


def run_checks(cfg: config.Config, X: np.ndarray, y: np.ndarray) -> dict:
    s = cfg.sanity
    spec = common.net_spec(cfg, X.shape[1])

    checks = initial_loss_checks(net.init_params(spec, common.rng(cfg, "sanity", 0)), spec,
                                 X[:s.num_images], y[:s.num_images], s)
    checks["overfit_small_subset"] = overfit_check(spec, X[:s.overfit_images],
                                                   y[:s.overfit_images], s,
                                                   common.rng(cfg, "sanity", 1))
    checks.update(gradient_checks(spec, X[:s.grad_images], y[:s.grad_images], s,
                                  common.rng(cfg, "sanity", 2)))
    return {"passed": all(c["passed"] for c in checks.values()), "checks": checks}


def main() -> None:
    cfg = config.from_argv()
    log = setup("sanity")
    start = time.perf_counter()

    X_train, y_train = common.load_split(cfg, "X_train", "y_train")
    report = run_checks(cfg, X_train, y_train)
    write_json(REPORT, report)

    with tracking.stage_run(cfg, "sanity"):
        tracking.mlflow.log_dict(report, "sanity_report.json")
        tracking.mlflow.log_metrics({f"sanity/{name}": c["value"]
                                     for name, c in report["checks"].items()})
        tracking.mlflow.set_tag("sanity_passed", str(report["passed"]).lower())

    for name, c in report["checks"].items():
        raw = c.get("raw_max_rel_error")
        note = f"; raw max relative error {max(raw.values()):.1e}" if raw else ""
        log.info("%-4s %-27s %-11.4g (%s%s)", "ok" if c["passed"] else "FAIL", name,
                 c["value"], c["bound"], note)
    failed = [n for n, c in report["checks"].items() if not c["passed"]]
    log.info("%d of %d checks passed in %.1f s", len(report["checks"]) - len(failed),
             len(report["checks"]), time.perf_counter() - start)
    if failed:
        details = "; ".join(f"{n}: {report['checks'][n]['value']:.4g} "
                            f"(needs {report['checks'][n]['bound']})" for n in failed)
        sys.exit(f"sanity failed: {details}")


if __name__ == "__main__":
    main()
