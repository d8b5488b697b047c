"""Stage fetch: verify the CIFAR-10 archive and turn it into uint8 images and int labels.

data.dvc brings data/cifar-10-python.tar.gz from the DVC remote `cifar10`; this stage
checks its md5 against `data.md5` before anything reads it, then writes data/cifar10/.
"""

import sys
import time
from pathlib import Path

import numpy as np

from pipeline import config, tracking
from pipeline.archive import ArchiveError, read_cifar10, verify_md5
from pipeline.io import atomic_dir, save_arrays, write_json
from pipeline.log import setup

OUT = Path("data/cifar10")


def fetch(archive: Path, accepted_md5: dict[str, str], out: Path = OUT) -> dict:
    """Verify, read and write the arrays; returns what meta.json holds."""
    source = verify_md5(archive, accepted_md5)
    data = read_cifar10(archive)

    meta = {
        "source": source,
        "md5": accepted_md5[source],
        "label_names": data.label_names,
        "train_counts": np.bincount(data.y_train, minlength=10).tolist(),
        "test_counts": np.bincount(data.y_test, minlength=10).tolist(),
    }
    with atomic_dir(out) as tmp:
        save_arrays(tmp, X_train=data.X_train, y_train=data.y_train,
                    X_test=data.X_test, y_test=data.y_test)
        write_json(tmp / "meta.json", meta)
    return meta


def main() -> None:
    cfg = config.from_argv()
    log = setup("fetch")
    start = time.perf_counter()

    try:
        meta = fetch(Path(cfg.data.archive), cfg.data.md5)
    except ArchiveError as err:
        sys.exit(f"fetch failed: {err}")
    seconds = time.perf_counter() - start

    with tracking.stage_run(cfg, "fetch"):
        tracking.mlflow.log_metrics({"fetch/seconds": seconds,
                                     "fetch/train_images": sum(meta["train_counts"]),
                                     "fetch/test_images": sum(meta["test_counts"])})

    log.info("archive %s (%s, md5 %s) -> %s: %d train, %d test images in %.1f s",
             cfg.data.archive, meta["source"], meta["md5"], OUT,
             sum(meta["train_counts"]), sum(meta["test_counts"]), seconds)


if __name__ == "__main__":
    main()
