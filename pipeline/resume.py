"""Finished trials kept on disk, so a search that was killed picks up where it stopped.

Each finished trial is one JSON file named by a key that hashes everything that decides its
numbers: the trial itself (stage, round, index, lr, reg, epochs, subset, seed), the search's
shared setup (net, schedule, BLAS threads, stopping rule), the arrays, the source of the
package (all of it: a trial reaches into more modules than one would list by hand) and the
numpy version. A changed config, dataset or training code therefore
never reuses a stale trial; the backend and the worker count are not in the key, because they
do not change a trial's numbers.

The folder is `results/lr_search/cache`, declared in dvc.yaml as an output with
`persist: true`: DVC deletes a stage's other outputs before running it, but keeps persistent
ones, so the cache survives until the stage runs again. It sits with the stage's results,
so an experiment queued by DVC (which runs in a copy of the repository) keeps its own.
Delete it to force every trial to run again.
"""

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pipeline.trials import Arrays, Outcome, Setup, Trial

CACHE = Path("results/lr_search/cache")
PACKAGE = Path(__file__).resolve().parent
KEPT = ("ok", "diverged", "stopped")  # a failed trial is tried again on resume


def data_digest(data: Arrays) -> str:
    h = hashlib.sha256()
    for array in (data.X_train, data.y_train, data.X_val, data.y_val):
        h.update(f"{array.dtype.str}{array.shape}".encode())
        h.update(memoryview(np.ascontiguousarray(array)).cast("B"))
    return h.hexdigest()


def code_digest() -> str:
    h = hashlib.sha256(np.__version__.encode())
    for source in sorted(PACKAGE.rglob("*.py")):
        h.update(str(source.relative_to(PACKAGE)).encode())
        h.update(source.read_bytes())
    return h.hexdigest()


class TrialCache:
    def __init__(self, setup: Setup, data: Arrays, folder: Path = CACHE):
        self.folder = folder
        self.context = {"setup": asdict(setup), "data": data_digest(data),
                        "code": code_digest()}

    def key(self, trial: Trial) -> str:
        blob = json.dumps({**self.context, "trial": asdict(trial)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def _path(self, trial: Trial) -> Path:
        return self.folder / f"{trial.name}.{self.key(trial)}.json"

    def get(self, trial: Trial) -> Outcome | None:
        path = self._path(trial)
        if not path.is_file():
            return None
        outcome = Outcome(**json.loads(path.read_text()))
        outcome.points = [tuple(point) for point in outcome.points]
        outcome.cached = True
        return outcome

    def put(self, trial: Trial, outcome: Outcome) -> None:
        if outcome.status not in KEPT:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(trial)
        # write then rename: a kill mid-write leaves a temporary file, never half an entry
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(asdict(outcome)))
        tmp.rename(path)
