"""The Ray backend: on a head this module starts on 127.0.0.1, and on a cluster the stage starts.

Every Ray process here listens on loopback only (Ray's single-machine mode, which the backend
turns on for a cluster on this machine) and is gone when its test ends. Token authentication
stays on, with a token made for this module and handed over in RAY_AUTH_TOKEN.
"""

import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from functools import partial
from pathlib import Path

import pytest
import search_fixtures
from conftest import ROOT
from search_fixtures import (
    DOOMED,
    build,
    flaky,
    make_arrays,
    outputs,
    run_stage,
    search_runs,
    stage_env,
    wait_for,
    where,
)
from test_lr_search import comparable, plan, setup_for

from pipeline import backends, config, trials

# Not imported here: Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it is imported, and the
# driver in this process must be in loopback mode like the head it joins.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                reason="the ray extra is not installed: pip install -e '.[ray]'")

RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        try:
            kids = search_fixtures.children(parent)
        except OSError:
            continue
        found.update(kids)
        todo += kids
    return found


def alive(pids) -> set[int]:
    """Those of `pids` still running (a zombie has exited)."""
    left = set()
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] != "Z":
            left.add(pid)
    return left


def listen_addresses(pids: set[int]) -> set[str]:
    """Local addresses of the TCP sockets these processes listen on."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = set()
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.add(_address(fields[1].split(":")[0], width))
    return found


def _address(hex_ip: str, width: int) -> str:
    raw = bytes.fromhex(hex_ip)
    # /proc/net prints each 32-bit word in host (little-endian) order
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if width == 8 else socket.AF_INET6
    return socket.inet_ntop(family, words)


def stop(pids: set[int]) -> set[int]:
    """SIGKILL those still alive (by id: every one of them was started by this test)."""
    left = alive(pids)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """`ray start --head --block` on 127.0.0.1; stopped with SIGTERM, which ends its tree."""
    port = free_port()
    log = tmp_path_factory.mktemp("ray") / "head.log"
    with log.open("w") as out:
        head = subprocess.Popen(
            [shutil.which("ray"), "start", "--head", f"--port={port}", "--num-cpus=2",
             "--include-dashboard=false", "--disable-usage-stats", "--block"],
            env={**os.environ, **RAY_ENV}, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        wait_for(lambda: "Ray runtime started" in log.read_text(), 180, "the Ray head", head)
        yield head, f"127.0.0.1:{port}"
    finally:
        tree = descendants(head.pid)
        head.send_signal(signal.SIGTERM)
        head.wait(timeout=60)
        deadline = time.monotonic() + 30
        while alive(tree) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not stop(tree), "Ray processes outlived their head"


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    ws = build(tmp_path_factory.mktemp("serial") / "ws", [], tmp_path_factory)
    run_stage(ws)
    return outputs(ws)


def test_search_on_a_loopback_ray_head_matches_serial(ray_head, serial, tmp_path,
                                                      tmp_path_factory):
    head, address = ray_head
    ws = build(tmp_path / "ws", [], tmp_path_factory)
    env = stage_env(ws, RAY_ADDRESS=address, **RAY_ENV)

    result = run_stage(ws, "search.backend=ray", "search.workers=2", env=env)

    assert outputs(ws) == serial
    assert f"Ray {address}: 2 workers" in result.stderr
    _, _, kids = search_runs(ws)
    assert {k.data.tags["backend"] for k in kids} == {"ray"}
    ray_workers = {k.data.tags["worker"] for k in kids if k.data.tags["search_stage"] != "probe"}
    probes = {k.data.tags["worker"] for k in kids if k.data.tags["search_stage"] == "probe"}
    assert len(ray_workers) >= 2 and not ray_workers & probes  # not the stage process
    tree = descendants(head.pid) | {head.pid}
    assert listen_addresses(tree) and listen_addresses(tree) <= LOOPBACK


@pytest.fixture
def driver(monkeypatch):
    """This process as a Ray driver; trial functions from search_fixtures travel by value,
    as the head cannot import tests/."""
    for key, value in RAY_ENV.items():
        monkeypatch.setenv(key, value)
    import ray

    ray.cloudpickle.register_pickle_by_value(search_fixtures)
    yield
    ray.cloudpickle.unregister_pickle_by_value(search_fixtures)


def run_on_ray(address: str, fn, folder: Path, count: int, retries: int) -> tuple[dict, list]:
    cfg = config.load(ROOT / "params.yaml", search_fixtures.SEARCH)
    make_arrays(folder)
    todo = plan(cfg, count=count)
    backend = backends.Ray(fn, setup_for(cfg), backends.load(folder, mmap=True), workers=2,
                           retries=retries, address=address)
    try:
        return dict(backend.run(todo, lambda: True)), todo
    finally:
        backend.close()


def test_ray_reruns_a_task_whose_worker_died_then_records_failure(ray_head, driver, tmp_path):
    got, todo = run_on_ray(ray_head[1], partial(flaky, str(tmp_path)), tmp_path / "arrays",
                           count=3, retries=1)

    cfg = config.load(ROOT / "params.yaml", search_fixtures.SEARCH)
    data = backends.load(tmp_path / "arrays", mmap=False)
    assert comparable(got[todo[0]]) == comparable(trials.run_trial(setup_for(cfg), todo[0],
                                                                   data))
    assert got[todo[DOOMED]].status == "failed"
    assert got[todo[DOOMED]].reason == "its Ray worker died: WorkerCrashedError (2 attempts)"
    assert got[todo[2]].status != "failed"


def test_ray_tasks_read_the_arrays_in_place_from_the_object_store(ray_head, driver, tmp_path):
    got, _ = run_on_ray(ray_head[1], where, tmp_path / "arrays", count=4, retries=0)

    # read-only: a view of the object store's one copy, not a copy unpickled for each trial
    assert {o.reason for o in got.values()} == {"ndarray::read-only"}


def test_stage_starts_a_local_ray_cluster_that_matches_serial_and_leaves_nothing(
        serial, tmp_path, tmp_path_factory):
    ws = build(tmp_path / "ws", [], tmp_path_factory)
    env = stage_env(ws, **RAY_ENV)
    env.pop("RAY_ADDRESS", None)
    stage = search_fixtures.start_stage(ws, "search.backend=ray", "search.workers=2", env=env)

    seen: dict[int, str] = {}
    addresses: set[str] = set()
    while stage.poll() is None:  # note the cluster's processes and sockets while it runs
        tree = descendants(stage.pid) | {stage.pid}
        seen |= {pid: search_fixtures.cmdline(pid) for pid in tree - set(seen)}
        addresses |= listen_addresses(tree)
        time.sleep(0.2)
    _, err = stage.communicate()

    assert stage.returncode == 0, err[-3000:]
    assert "Ray local cluster: 2 workers" in err
    assert outputs(ws) == serial
    assert any("raylet" in line for line in seen.values())
    assert addresses and addresses <= LOOPBACK
    seen.pop(stage.pid)
    deadline = time.monotonic() + 30
    while alive(seen) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not stop(seen), "Ray processes outlived the stage"
