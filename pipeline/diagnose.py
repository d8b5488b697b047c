"""Read a training history the way the lecture teaches to read loss curves.

Each rule looks at one shape and names it:

- lr too high: the loss explodes (inf, NaN or far above its start), or it drops at once and
  then sits on a high plateau;
- lr too low: the loss falls along a straight line, as fast at the end as at the start;
- bad initialisation: the loss stays flat for a while, then suddenly drops;
- overfitting: the gap between train and val accuracy keeps widening;
- update/weight ratio of a layer far from 1e-3 (lr too high above the band, too low below).

A history with none of these is "healthy". The thresholds are named constants below.
"""

from dataclasses import dataclass

import numpy as np

EXPLODE_FACTOR = 3.0        # loss this many times its start: exploded
EARLY = 0.1                 # the first 10 % of the steps
PLATEAU_SHARE = 0.8         # share of the whole decrease done in the early steps
PLATEAU_HIGH = 0.75         # ... while the final loss is still above this fraction of the start
LINEAR_HALVES = 1.5         # first-half decrease / second-half decrease below this: straight line
MOVED = 0.02                # a decrease under this fraction of the start did not move the loss
FLAT_SHARE = 0.2            # at least this share of the steps flat before the drop
DROP = 0.15                 # a drop of this fraction of the start within EARLY of the steps
GAP = 0.1                   # train - val accuracy gap that counts as overfitting
RATIO_BAND = (1e-4, 1e-2)   # update/weight ratios outside a decade around 1e-3


@dataclass(frozen=True)
class Finding:
    name: str
    message: str


def smooth(loss: np.ndarray, window: int) -> np.ndarray:
    """Moving average; minibatch noise would otherwise hide the shape."""
    window = max(1, min(window, len(loss)))
    kernel = np.ones(window) / window
    return np.convolve(loss, kernel, mode="valid")


def _exploded(loss: np.ndarray) -> Finding | None:
    if not np.all(np.isfinite(loss)) or loss.max() > EXPLODE_FACTOR * loss[0]:
        worst = loss[~np.isfinite(loss)][0] if not np.all(np.isfinite(loss)) else loss.max()
        return Finding("lr_too_high", f"the loss exploded ({loss[0]:.3g} -> {worst:.3g}): "
                                      "lower the learning rate")
    return None


def _curve_shape(loss: np.ndarray) -> Finding | None:
    curve = smooth(loss, max(len(loss) // 20, 1))
    if len(curve) < 10:
        return None
    start, end = curve[0], curve[-1]
    total = start - end
    early = curve[max(int(EARLY * len(curve)), 1)]

    if total > MOVED * start and end > PLATEAU_HIGH * start and \
            (start - early) >= PLATEAU_SHARE * total:
        return Finding("lr_too_high", f"the loss fell at once and then stalled at {end:.3g} "
                                      f"(start {start:.3g}): lower the learning rate")

    flat = _flat_then_drop(curve)
    if flat is not None:
        return flat

    half = len(curve) // 2
    first, second = start - curve[half], curve[half] - end
    if total <= MOVED * start:
        return Finding("lr_too_low", f"the loss barely moved ({start:.3g} -> {end:.3g}): "
                                     "raise the learning rate")
    if second > 0 and first / second < LINEAR_HALVES:
        return Finding("lr_too_low", "the loss falls along a straight line, as fast at the "
                                     "end as at the start: raise the learning rate")
    return None


def _flat_then_drop(curve: np.ndarray) -> Finding | None:
    """Flat for at least FLAT_SHARE of the steps, then a drop of DROP within EARLY steps."""
    start = curve[0]
    window = max(int(EARLY * len(curve)), 1)
    drops = curve[:-window] - curve[window:]
    sudden = np.flatnonzero(drops > DROP * start)
    if not len(sudden):
        return None

    onset = sudden[0]
    before = start - curve[onset]
    if onset >= FLAT_SHARE * len(curve) and before < MOVED * start:
        return Finding("bad_init", f"the loss stayed flat for {onset} steps, then dropped "
                                   "suddenly: check the weight initialisation")
    return None


def _overfitting(train_acc, val_acc) -> Finding | None:
    gap = np.asarray(train_acc) - np.asarray(val_acc)
    if len(gap) < 3 or gap[-1] < GAP:
        return None
    half = len(gap) // 2
    if gap[-1] > gap[:half].mean() and max(val_acc[half:]) <= max(val_acc[:half]) + 0.01:
        return Finding("overfitting", f"train/val accuracy gap widened to {gap[-1]:.2f} while "
                                      "val accuracy stalled: raise regularization or get data")
    return None


def _ratios(ratios: dict[str, list[float]], last: int) -> list[Finding]:
    findings = []
    low, high = RATIO_BAND
    for name, values in ratios.items():
        tail = np.asarray(values[-last:])
        tail = tail[np.isfinite(tail)]
        if not len(tail):
            continue
        median = float(np.median(tail))
        if median > high:
            findings.append(Finding(f"ratio_high_{name}", f"update/weight ratio of {name} is "
                                    f"{median:.1e} (healthy near 1e-3): lr too high"))
        elif median < low:
            findings.append(Finding(f"ratio_low_{name}", f"update/weight ratio of {name} is "
                                    f"{median:.1e} (healthy near 1e-3): lr too low"))
    return findings


def diagnose(loss, train_acc=(), val_acc=(), ratios=None, last_steps: int = 100
             ) -> list[Finding]:
    """Findings for one history: loss per step, accuracies per epoch, ratios per step."""
    loss = np.asarray(loss, dtype=np.float64)
    if len(loss) < 2:
        return []

    exploded = _exploded(loss)
    if exploded is not None:
        return [exploded]

    findings = [f for f in (_curve_shape(loss), _overfitting(train_acc, val_acc)) if f]
    findings += _ratios(ratios or {}, last_steps)
    return findings or [Finding("healthy", "no warning sign in the loss, accuracy or ratios")]


def names(findings: list[Finding]) -> str:
    """Comma-separated finding names, for an MLflow tag."""
    return ",".join(f.name for f in findings)
