"""MLflow for every stage: where the store is, how a run is tagged, and batched metrics.

The store is a SQLite file at the repository root unless `tracking.uri` or
MLFLOW_TRACKING_URI says otherwise. The root comes from DVC_ROOT when DVC runs the stage,
so experiments queued with `dvc exp run --queue` (which run in temporary copies of the
repository) still write to the one store the user opens with `mlflow ui`.
"""

import contextlib
import fcntl
import json
import os
import subprocess
import time
from pathlib import Path

from pipeline.config import Config, flatten

# No telemetry leaves the machine unless the user asks for it.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
from mlflow.entities import Metric, Param  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID  # noqa: E402

STORE_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
ARCHIVE_META = Path("data/cifar10/meta.json")
MAX_PARAMS_PER_CALL = 100
MAX_ENTITIES_PER_CALL = 1000
LOCKED_RETRIES = 8


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
def _opening_store(uri: str):
    """Held while a stage opens the store, which creates its tables and the experiment first.

    Two processes creating one SQLite store at once race through its migrations ("duplicate
    column name") and the experiment; experiments run by `dvc queue start -j 2` on a fresh
    clone do exactly that. An exclusive flock on the database file itself orders them
    without a lock file of its own (SQLite's locks are fcntl locks, which flock leaves alone).
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    path = Path(uri.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def stage_run(cfg: Config, stage: str):
    """An MLflow run for one stage, tagged and with the whole config as dotted params."""
    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    with _opening_store(uri):
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
            retry_locked(self._client.log_batch, self.run_id, metrics=chunk, synchronous=True)
            self.sent += len(chunk)
            del self.points[:self.flush_every]
        self.seconds += time.perf_counter() - start


def retry_locked(call, *args, **kwargs):
    """`call`, tried again with a growing pause while SQLite says "database is locked".

    SQLite lets one writer in at a time. Within a search the stage process is the only writer
    (see log_child_run), but two searches can share one store, e.g. experiments run by
    `dvc queue start -j 2`; a long write of one can outlast the other's busy timeout.
    """
    for attempt in range(LOCKED_RETRIES):
        try:
            return call(*args, **kwargs)
        except Exception as err:
            if "database is locked" not in str(err) or attempt == LOCKED_RETRIES - 1:
                raise
            time.sleep(0.05 * 2 ** attempt)


def log_child_run(parent: mlflow.entities.Run, name: str, params: dict, tags: dict[str, str],
                  points: list[tuple[str, float, int, int]], start_ms: int, end_ms: int,
                  status: str = "FINISHED") -> str:
    """A nested run written in one go from a finished trial: params, tags, every point.

    Trials run in worker processes or on a Ray cluster, yet only the stage process writes to
    the store: workers hand their points back with the outcome. One writer means no lock
    contention and no point lost to it however many trials run at once, and workers need no
    access to the store (a Ray node elsewhere could not even see the SQLite file). The run
    keeps the trial's own start and end times, not the time it was logged.
    """
    client = MlflowClient()
    run = retry_locked(client.create_run, parent.info.experiment_id, start_time=start_ms,
                       tags={**tags, MLFLOW_PARENT_RUN_ID: parent.info.run_id}, run_name=name)
    run_id = run.info.run_id
    batch = [Param(key, str(value)) for key, value in params.items()]
    batch += [Metric(key, float(value), stamp, step) for key, value, step, stamp in points]
    # one transaction per 1000 entities (MLflow's limit per call), the params in the first
    for start in range(0, len(batch), MAX_ENTITIES_PER_CALL):
        chunk = batch[start:start + MAX_ENTITIES_PER_CALL]
        retry_locked(client.log_batch, run_id, synchronous=True,
                     params=[e for e in chunk if isinstance(e, Param)],
                     metrics=[e for e in chunk if isinstance(e, Metric)])
    retry_locked(client.set_terminated, run_id, status=status, end_time=end_ms)
    return run_id
