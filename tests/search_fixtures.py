"""What the search tests share: a tiny workspace in which the lr_search stage really runs.

A workspace is a folder with params.yaml (composed from conf/ as DVC would), synthetic
preprocessed arrays in data/preprocessed/mean_image/ and its own SQLite MLflow store, copied
from one migrated once per session (creating a store costs seconds). The stage runs as
`python -m pipeline.lr_search` with this checkout first on PYTHONPATH.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, compose_params

from pipeline import trials

# 400 training images of 3072 values, batches of 50: 8 steps per epoch; 2 rounds + fine
SEARCH = [
    "search.batch_size=50", "search.probe.steps=8", "search.probe.num_train=400",
    "search.coarse.trials=6", "search.coarse.epochs=3", "search.coarse.num_train=400",
    "search.coarse.lr=[1e-2,1e0]", "search.fine.trials=3", "search.fine.epochs=2",
    "search.fine.num_train=400", "search.max_widen=1",
]
STEPS_PER_EPOCH = 8
OUTPUTS = ("trials.csv", "best.json", "probes.json")


# Trial functions for the backend tests. They live here, not in a test module, because a
# worker process imports the module of the function it is sent, and this one is light.
DOOMED = 1  # the trial index whose worker dies every time


def flaky(markers: str, setup, trial, data):
    """Kills its own worker: trial 0 on its first attempt, trial DOOMED on every attempt.

    Bind `markers` (a folder) with functools.partial; it remembers the first attempts.
    """
    marker = Path(markers) / trial.name
    if trial.index == DOOMED or (trial.index == 0 and not marker.exists()):
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return trials.run_trial(setup, trial, data)


def broken(setup, trial, data):
    raise ValueError(f"no such layer in {trial.name}")


def where(setup, trial, data):
    """Which worker ran the trial and what it was handed as X_train."""
    kind = f"{type(data.X_train).__name__}:{getattr(data.X_train, 'filename', '')}"
    writable = "writable" if data.X_train.flags.writeable else "read-only"
    return trials.Outcome("ok", reason=f"{kind}:{writable}", worker=str(os.getpid()))


def make_arrays(folder: Path, n_train: int = 400, n_val: int = 100, seed: int = 0) -> None:
    """Ten noisy class centres: learnable in a few epochs, not perfectly."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((10, 3072)).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val)):
        y = rng.integers(0, 10, n)
        X = 0.12 * centres[y] + rng.standard_normal((n, 3072)).astype(np.float32)
        np.save(folder / f"X_{split}.npy", X.astype(np.float32))
        np.save(folder / f"y_{split}.npy", y.astype(np.int64))


def tiny_dvc_repo(tmp_path: Path, make_repo, overrides: list[str] = ()) -> tuple[Path, list]:
    """A git+DVC copy of the project on a tiny archive (test_pipeline's TINY config);
    returns it and the overrides that compose its params.yaml."""
    from archive_fixtures import make_archive
    from test_pipeline import TINY

    from pipeline.archive import file_md5

    source = tmp_path / "mirror"
    source.mkdir()
    make_archive(source / "cifar-10-python.tar.gz", n_per_batch=100, seed=3)
    tiny = [*TINY, f"+data.md5.tiny={file_md5(source / 'cifar-10-python.tar.gz')}",
            *overrides]
    return make_repo(source, tiny), tiny


def empty_store(factory: pytest.TempPathFactory) -> Path:
    """An MLflow store whose tables exist, made once per session: migrations take seconds."""
    from mlflow.tracking import MlflowClient

    path = factory.getbasetemp() / "mlflow-template.db"
    if not path.exists():
        MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def uri(ws: Path) -> str:
    return f"sqlite:///{ws / 'mlflow.db'}"


def build(ws: Path, overrides: list[str], factory: pytest.TempPathFactory) -> Path:
    """A workspace at `ws` for the search config SEARCH + overrides."""
    (ws / "conf").mkdir(parents=True)
    shutil.copytree(ROOT / "conf", ws / "conf", dirs_exist_ok=True)
    compose_params(ws, [*SEARCH, *overrides])
    shutil.rmtree(ws / "conf")
    make_arrays(ws / "data/preprocessed/mean_image")
    shutil.copy(empty_store(factory), ws / "mlflow.db")
    return ws


def stage_env(ws: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": uri(ws),
           "MLFLOW_DISABLE_TELEMETRY": "true", **extra}
    env.pop("DVC_ROOT", None)
    return env


def start_stage(ws: Path, *overrides: str, env: dict | None = None) -> subprocess.Popen:
    """The stage in its own process group, so a test can kill it with all its workers."""
    return subprocess.Popen([sys.executable, "-m", "pipeline.lr_search", *overrides], cwd=ws,
                            env=env or stage_env(ws), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def run_stage(ws: Path, *overrides: str, env: dict | None = None,
              check: bool = True) -> subprocess.CompletedProcess:
    proc = start_stage(ws, *overrides, env=env)
    out, err = proc.communicate(timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"lr_search exited {proc.returncode}\n{err[-6000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def outputs(ws: Path) -> dict[str, str]:
    return {name: (ws / "results/lr_search" / name).read_text() for name in OUTPUTS}


def cached(ws: Path) -> list[Path]:
    folder = ws / "results/lr_search/cache"
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"stage ended before {what}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the stage and every worker it started (they share its process group)."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def search_runs(ws: Path):
    """(the latest lr_search parent run, its child runs) from the workspace's store."""
    import mlflow

    client = mlflow.tracking.MlflowClient(uri(ws))
    experiment = client.get_experiment_by_name("cifar10-babysitting")
    runs = client.search_runs([experiment.experiment_id], max_results=5000)
    parents = [r for r in runs if r.info.run_name == "lr_search"]
    parent = max(parents, key=lambda r: r.info.start_time)
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return client, parent, kids
