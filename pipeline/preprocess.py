"""Stage preprocess: split, zero-centre and optionally scale, with training statistics only.

Two modes from the lecture: subtract the mean image (32x32x3 values) or the per-channel
mean (3 values); `scale_std` also divides by the matching std. Validation and test get the
statistics of the training split, never their own.

    python -m pipeline.preprocess mean_image     # writes data/preprocessed/mean_image/
"""

import sys
import time
from pathlib import Path

import numpy as np

from pipeline import config, tracking
from pipeline.config import Mode
from pipeline.io import atomic_dir, load_arrays, save_arrays, write_json
from pipeline.log import setup

RAW = Path("data/cifar10")
OUT = Path("data/preprocessed")
CHUNK = 5000


def split(X_train, y_train, X_test, y_test, num_train, num_val, num_test):
    """Train = the first num_train training images, val = the next num_val, test = first num_test."""
    if num_train + num_val > len(X_train) or num_test > len(X_test):
        raise ValueError(f"data.num_train + data.num_val = {num_train + num_val} and "
                         f"data.num_test = {num_test}, but the archive holds {len(X_train)} "
                         f"training and {len(X_test)} test images")
    val = slice(num_train, num_train + num_val)
    return {
        "train": (X_train[:num_train], y_train[:num_train]),
        "val": (X_train[val], y_train[val]),
        "test": (X_test[:num_test], y_test[:num_test]),
    }


def statistics(X: np.ndarray, mode: Mode) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of uint8 images (N, 32, 32, 3), in float64, accumulated in chunks.

    mean_image: (32, 32, 3) arrays; per_channel: (3,) arrays.
    """
    axes = (0,) if mode == Mode.mean_image else (0, 1, 2)
    count = X.shape[0] * int(np.prod([X.shape[a] for a in axes[1:]]))
    total = 0.0
    total_sq = 0.0
    for start in range(0, X.shape[0], CHUNK):
        chunk = X[start:start + CHUNK].astype(np.float64)
        total = total + chunk.sum(axis=axes)
        total_sq = total_sq + (chunk * chunk).sum(axis=axes)

    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    return mean, std


def apply(X: np.ndarray, mean: np.ndarray, std: np.ndarray | None) -> np.ndarray:
    """(N, 32, 32, 3) uint8 -> (N, 3072) float32, centred and optionally scaled."""
    out = X.astype(np.float32)
    out -= mean.astype(np.float32)
    if std is not None:
        out /= np.maximum(std, 1e-8).astype(np.float32)
    return out.reshape(X.shape[0], -1)


def preprocess(cfg: config.Config, mode: Mode, raw: Path = RAW, out: Path = OUT) -> dict:
    X_train, y_train, X_test, y_test = load_arrays(raw, "X_train", "y_train", "X_test", "y_test",
                                                   mmap=True)
    d = cfg.data
    splits = split(X_train, y_train, X_test, y_test, d.num_train, d.num_val, d.num_test)
    mean, std = statistics(np.asarray(splits["train"][0]), mode)
    scale = std if cfg.preprocess.scale_std else None

    with atomic_dir(out / mode.value) as tmp:
        for name, (X, y) in splits.items():
            save_arrays(tmp, **{f"X_{name}": apply(np.asarray(X), mean, scale),
                                f"y_{name}": np.asarray(y, dtype=np.int64)})
        save_arrays(tmp, mean=mean, std=std)

    return {
        "mode": mode.value,
        "scale_std": cfg.preprocess.scale_std,
        "sizes": {name: int(len(y)) for name, (_, y) in splits.items()},
        "mean_shape": list(mean.shape),
        "mean_of_mean": float(mean.mean()),
        "mean_of_std": float(std.mean()),
        "channel_means": np.asarray(mean).reshape(-1, 3).mean(axis=0).tolist(),
    }


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0] not in Mode.__members__:
        sys.exit(f"usage: python -m pipeline.preprocess {{{'|'.join(Mode.__members__)}}} "
                 "[key=value ...]")
    mode = Mode(args[0])
    cfg = config.from_argv(args[1:])
    log = setup("preprocess")
    start = time.perf_counter()

    try:
        summary = preprocess(cfg, mode)
    except ValueError as err:
        sys.exit(f"preprocess failed: {err}")
    write_json(Path("results/preprocess") / f"{mode.value}.json", summary)
    seconds = time.perf_counter() - start

    with tracking.stage_run(cfg, f"preprocess/{mode.value}"):
        tracking.mlflow.log_dict(summary, f"preprocess_{mode.value}.json")
        for stat in ("mean", "std"):
            tracking.mlflow.log_artifact(str(OUT / mode.value / f"{stat}.npy"),
                                         f"statistics/{mode.value}")
        tracking.mlflow.log_metrics({"preprocess/seconds": seconds,
                                     "preprocess/mean_of_mean": summary["mean_of_mean"],
                                     "preprocess/mean_of_std": summary["mean_of_std"]})

    sizes = summary["sizes"]
    log.info("%s%s: %d train / %d val / %d test, channel means %s, %.1f s", mode.value,
             " + std scaling" if summary["scale_std"] else "", sizes["train"], sizes["val"],
             sizes["test"], " ".join(f"{m:.1f}" for m in summary["channel_means"]), seconds)


if __name__ == "__main__":
    main()
