"""One logging setup for every stage: short lines a person wants to read."""

import logging
import sys


def setup(stage: str) -> logging.Logger:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s {stage:<11} %(message)s", datefmt="%H:%M:%S")
    for noisy in ("mlflow", "alembic", "urllib3", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return logging.getLogger(f"pipeline.{stage}")
