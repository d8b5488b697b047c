"""Where trials run: in the stage process, in local worker processes, or on a Ray cluster.

Every backend takes a list of trials and yields `(trial, outcome)` pairs as trials finish, in
whatever order that is; pipeline.trials makes each outcome independent of where and when it
ran, so the search is the same whichever backend or worker count ran it. The arrays reach each
worker once, not once per trial: local workers memory-map the preprocessed .npy files (one
copy in the page cache for all of them), Ray tasks read them from the object store.

A worker that dies (killed, out of memory) costs its trial an attempt; the trial is run again
up to `retries` times and then comes back as a `failed` outcome, and the search goes on. An
exception raised by the trial itself is a bug, not bad luck, and stops the search.
"""

import ipaddress
import logging
import os
import subprocess
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from multiprocessing import Pipe
from multiprocessing.connection import Connection, wait
from pathlib import Path

import numpy as np

from pipeline import trials
from pipeline.io import load_arrays
from pipeline.trials import Arrays, Outcome, Setup, Trial

log = logging.getLogger("pipeline.lr_search")

TrialFn = Callable[[Setup, Trial, Arrays], Outcome]
Results = Iterator[tuple[Trial, Outcome]]
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
RAY_INSTALL = ("search.backend=ray needs Ray, an optional extra of this package: "
               "pip install -e '.[ray]' (in a checkout) or pip install 'ray>=2.60'")


class BackendError(RuntimeError):
    pass


class TrialError(RuntimeError):
    """A trial raised: a bug in the training code, reported with the worker's traceback."""


def cores() -> int:
    return len(os.sched_getaffinity(0))


def load(folder: Path, mmap: bool) -> Arrays:
    return Arrays(*load_arrays(folder, *trials.ARRAY_NAMES, mmap=mmap))


class Serial:
    """Trials one after the other in the stage process."""

    name = "serial"

    def __init__(self, fn: TrialFn, setup: Setup, data: Arrays):
        self.fn, self.setup, self.data = fn, setup, data
        self.startup_seconds = 0.0

    def run(self, todo: Sequence[Trial], more: Callable[[], bool]) -> Results:
        for trial in todo:
            if not more():
                return
            yield trial, self.fn(self.setup, trial, self.data)

    def close(self) -> None:
        pass


# ---- local worker processes -------------------------------------------------------------------

class _Worker:
    """One `python -m pipeline.backends FD` process and its end of a socket pair.

    A fresh interpreter rather than multiprocessing's spawn, which would re-import the stage
    module (and MLflow, 2 s) in every worker; and rather than fork, which is unsafe in a
    process that holds threads and an SQLite connection. Its BLAS threads are capped through
    the environment before numpy loads.
    """

    def __init__(self, folder: Path, blas_threads: int):
        ours, theirs = Pipe()
        path = [str(PACKAGE_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {**os.environ, **{key: str(blas_threads) for key in BLAS_ENV},
               "PYTHONPATH": os.pathsep.join(path)}
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.backends",
                                      str(theirs.fileno())], pass_fds=[theirs.fileno()], env=env)
        theirs.close()
        self.conn = ours
        # the parent's sys.path, so that a trial function from any importable module unpickles
        self.conn.send((list(sys.path), str(folder)))

    def wait_ready(self) -> None:
        """Until the worker has mapped the arrays; one that dies first cannot run anything."""
        try:
            self.conn.recv()
        except (EOFError, OSError):
            self.stop()
            raise BackendError(f"a local worker failed to start (exit code "
                               f"{self.proc.returncode}); its error is above") from None

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.conn.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Local:
    """A pool of `workers` processes on this machine, each running one trial at a time."""

    name = "local"

    def __init__(self, fn: TrialFn, setup: Setup, folder: Path, workers: int, retries: int):
        self.fn, self.setup, self.folder = fn, setup, folder
        self.workers, self.retries = workers, retries
        self.idle: list[_Worker] = []
        self.busy: dict[Connection, tuple[_Worker, Trial]] = {}
        self.startup_seconds = 0.0
        if workers * setup.blas_threads > cores():
            log.warning("%d workers x %d BLAS threads exceed the %d cores of this machine",
                        workers, setup.blas_threads, cores())

    def run(self, todo: Sequence[Trial], more: Callable[[], bool]) -> Results:
        queue, attempts = deque(todo), {trial: 0 for trial in todo}
        while queue or self.busy:
            while queue and len(self.busy) < self.workers and more():
                self._dispatch(queue.popleft())
            if not self.busy:
                return  # the budget stopped dispatching
            for conn in wait(list(self.busy)):
                worker, trial = self.busy.pop(conn)
                outcome = self._receive(worker, trial)
                attempts[trial] += 1
                if outcome is not None:
                    outcome.attempts = attempts[trial]
                    yield trial, outcome
                elif attempts[trial] <= self.retries:
                    log.warning("worker of %s died (exit code %s); running it again",
                                trial.name, worker.proc.returncode)
                    queue.appendleft(trial)
                else:
                    yield trial, trials.failed(attempts[trial], "its worker died every time")

    def _dispatch(self, trial: Trial) -> None:
        if not self.idle and not self.busy:
            self.idle = self._start(self.workers)  # the whole pool at once, on first use
        worker = self.idle.pop() if self.idle else self._start(1)[0]
        try:
            worker.conn.send((self.fn, self.setup, trial))
        except OSError:  # died while idle: not the trial's fault
            worker.stop()
            worker = self._start(1)[0]
            worker.conn.send((self.fn, self.setup, trial))
        self.busy[worker.conn] = (worker, trial)

    def _start(self, count: int) -> list[_Worker]:
        start = time.perf_counter()
        workers = [_Worker(self.folder, self.setup.blas_threads) for _ in range(count)]
        try:
            for worker in workers:
                worker.wait_ready()
        except BackendError:
            for worker in workers:
                worker.stop()
            raise
        self.startup_seconds += time.perf_counter() - start
        return workers

    def _receive(self, worker: _Worker, trial: Trial) -> Outcome | None:
        """The outcome, or None when the worker died before sending it."""
        try:
            kind, value = worker.conn.recv()
        except (EOFError, OSError):
            worker.stop()
            return None
        if kind == "error":
            raise TrialError(f"{trial.name} raised in worker pid {worker.proc.pid}:\n{value}")
        self.idle.append(worker)
        return value

    def close(self) -> None:
        for worker in [*self.idle, *(w for w, _ in self.busy.values())]:
            worker.stop()
        self.idle, self.busy = [], {}


def serve(fd: int) -> None:
    """The worker loop: load the arrays once, then run trials until told to stop."""
    conn = Connection(fd)
    path, folder = conn.recv()
    sys.path.extend(p for p in path if p not in sys.path)
    data = load(Path(folder), mmap=True)
    conn.send("ready")
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the stage process is gone
            return
        if task is None:
            return
        fn, setup, trial = task
        try:
            reply = ("done", fn(setup, trial, data))
        except Exception:  # noqa: BLE001 - any bug goes back to the stage, with its traceback
            reply = ("error", traceback.format_exc())
        try:
            conn.send(reply)
        except OSError:  # the stage process died while this trial ran
            return


# ---- Ray ----------------------------------------------------------------------------------------

def is_loopback(address: str | None) -> bool:
    """A Ray address on this machine's loopback (or none, meaning a cluster we start)."""
    if not address:
        return True
    host = address.removeprefix("ray://").rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def import_ray(address: str | None):
    """Import Ray, or stop with the install command when the extra is missing."""
    if is_loopback(address):
        # Ray's single-machine mode: every Ray process binds 127.0.0.1 instead of all
        # interfaces. A cluster that only this machine uses has no business on the network.
        # It is read when ray is imported, hence here.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise BackendError(RAY_INSTALL) from None
    return ray


def _execute(fn: TrialFn, setup: Setup, trial: Trial, *arrays) -> Outcome:
    """A Ray task: the arrays arrive as zero-copy views of the object store."""
    return fn(setup, trial, Arrays(*arrays))


class Ray:
    """Trials as Ray tasks on the cluster at `address` (or RAY_ADDRESS), else on a new local one.

    At most `workers` tasks are in flight; Ray itself reruns a task whose worker died, up to
    `retries` times. The package travels with the tasks (runtime_env py_modules), so a cluster
    started elsewhere runs this checkout's code, not whatever it has installed.
    """

    name = "ray"
    DIED = ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError", "LocalRayletDiedError")

    def __init__(self, fn: TrialFn, setup: Setup, data: Arrays, workers: int | None,
                 retries: int, address: str | None):
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.ray = import_ray(self.address)
        self.fn, self.setup, self.data = fn, setup, data
        self.workers, self.retries = workers, retries
        self.refs: list | None = None
        self.startup_seconds = 0.0

    def _start(self) -> None:
        ray, start = self.ray, time.perf_counter()
        runtime_env = {"py_modules": [str(PACKAGE_ROOT / "pipeline")],
                       "env_vars": {key: str(self.setup.blas_threads) for key in BLAS_ENV}}
        common = {"runtime_env": runtime_env, "logging_level": logging.WARNING,
                  "log_to_driver": False}
        if self.address:
            ray.init(address=self.address, **common)
        else:
            cpus = (self.workers or cores()) * self.setup.blas_threads
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, **common)
        if self.workers is None:
            self.workers = max(int(ray.cluster_resources().get("CPU", 1))
                               // self.setup.blas_threads, 1)
        # Plain ndarrays, not np.memmap: Ray hands a task a read-only view of an ndarray in
        # the object store, but unpickles a memmap into a private copy, 600 MB per trial.
        self.refs = [ray.put(np.asarray(array)) for array in
                     (self.data.X_train, self.data.y_train, self.data.X_val, self.data.y_val)]
        self.task = ray.remote(_execute).options(num_cpus=self.setup.blas_threads,
                                                 max_retries=self.retries,
                                                 retry_exceptions=False)
        self.startup_seconds = time.perf_counter() - start
        log.info("Ray %s: %d workers, started in %.1f s", self.address or "local cluster",
                 self.workers, self.startup_seconds)

    def run(self, todo: Sequence[Trial], more: Callable[[], bool]) -> Results:
        if self.refs is None:
            self._start()
        queue, running = deque(todo), {}
        while queue or running:
            while queue and len(running) < self.workers and more():
                trial = queue.popleft()
                running[self.task.remote(self.fn, self.setup, trial, *self.refs)] = trial
            if not running:
                return
            done, _ = self.ray.wait(list(running), num_returns=1)
            trial = running.pop(done[0])
            yield trial, self._result(done[0], trial)

    def _result(self, ref, trial: Trial) -> Outcome:
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as err:
            raise TrialError(f"{trial.name} raised on Ray:\n{err}") from None
        except ray.exceptions.RayError as err:
            if type(err).__name__ not in self.DIED:
                raise
            return trials.failed(self.retries + 1, f"its Ray worker died: {type(err).__name__}")

    def close(self) -> None:
        if self.refs is not None:
            # a cluster we started goes down with its processes; an existing one is only left
            self.ray.shutdown()
            self.refs = None


if __name__ == "__main__":
    serve(int(sys.argv[1]))
