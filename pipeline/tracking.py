"""MLflow for every stage: where the store is, how a run is tagged, and batched metrics.

The store is a SQLite file at the repository root unless `tracking.uri` or
MLFLOW_TRACKING_URI says otherwise. The root comes from DVC_ROOT when DVC runs the stage,
so experiments queued with `dvc exp run --queue` (which run in temporary copies of the
repository) still write to the one store the user opens with `mlflow ui`.
"""

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path

from pipeline.config import Config, flatten

# No telemetry leaves the machine unless the user asks for it.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
from mlflow.entities import Metric  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

STORE_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
ARCHIVE_META = Path("data/cifar10/meta.json")
MAX_PARAMS_PER_CALL = 100


def repo_root() -> Path:
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()

    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / ".dvc").is_dir():
            return folder
    return here


def tracking_uri(cfg: Config) -> str:
    if cfg.tracking.uri:
        return cfg.tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{repo_root() / STORE_FILE}"


def _experiment_id(name: str) -> str:
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id

    # Artifacts sit beside the SQLite store rather than in ./mlruns of whatever folder a
    # stage ran in, so queued experiments do not scatter them across temporary copies.
    location = (repo_root() / ARTIFACT_DIR).as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=repo_root(), timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _archive_md5() -> str:
    meta = repo_root() / ARCHIVE_META
    if not meta.is_file():
        meta = ARCHIVE_META
    if not meta.is_file():
        return "unknown"
    return json.loads(meta.read_text()).get("md5", "unknown")


def run_tags(stage: str) -> dict[str, str]:
    return {
        "stage": stage,
        "git_commit": _git_commit(),
        "dvc_experiment": os.environ.get("DVC_EXP_NAME", ""),
        "archive_md5": _archive_md5(),
    }


def log_params(cfg: Config) -> None:
    params = sorted(flatten(cfg).items())
    for start in range(0, len(params), MAX_PARAMS_PER_CALL):
        mlflow.log_params(dict(params[start:start + MAX_PARAMS_PER_CALL]))


@contextlib.contextmanager
def stage_run(cfg: Config, stage: str):
    """An MLflow run for one stage, tagged and with the whole config as dotted params."""
    mlflow.set_tracking_uri(tracking_uri(cfg))
    experiment_id = _experiment_id(cfg.tracking.experiment)

    with mlflow.start_run(experiment_id=experiment_id, run_name=stage,
                          tags=run_tags(stage)) as run:
        log_params(cfg)
        yield run


@contextlib.contextmanager
def child_run(name: str, params: dict, stage: str):
    """A nested run under the active one (one search trial, one probe)."""
    experiment_id = mlflow.active_run().info.experiment_id
    with mlflow.start_run(experiment_id=experiment_id, run_name=name, nested=True,
                          tags=run_tags(stage)) as run:
        mlflow.log_params(params)
        yield run


class MetricBuffer:
    """Collects metric points and sends them in log_batch calls of `flush_every` points.

    One HTTP or SQLite round trip per point would cost more than the training step itself;
    `seconds` adds up the time spent sending, so the stage can report the overhead.
    """

    def __init__(self, run_id: str, flush_every: int = 1000):
        self.run_id = run_id
        self.flush_every = min(flush_every, 1000)
        self.points: list[Metric] = []
        self.seconds = 0.0
        self.sent = 0
        self._client = MlflowClient()

    def log(self, metrics: dict[str, float], step: int) -> None:
        stamp = int(time.time() * 1000)
        for key, value in metrics.items():
            self.points.append(Metric(key, float(value), stamp, step))
        if len(self.points) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        start = time.perf_counter()
        while self.points:
            chunk = self.points[:self.flush_every]
            self._client.log_batch(self.run_id, metrics=chunk, synchronous=True)
            self.sent += len(chunk)
            del self.points[:self.flush_every]
        self.seconds += time.perf_counter() - start
