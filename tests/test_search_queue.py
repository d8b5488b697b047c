"""DVC's own queue: two queued experiments run side by side and both land in the repo's store.

Queued experiments run in temporary copies of the repository (.dvc/tmp/exps); the stages
find the store of the repository itself through DVC_ROOT, not one in their copy.
"""

import time

import mlflow
from conftest import run
from search_fixtures import tiny_dvc_repo

QUEUED = {"queued-a": "search.coarse.trials=2", "queued-b": "search.coarse.trials=4"}


def queue_states(repo) -> dict[str, str]:
    """{experiment name: state} from `dvc queue status` (Task, Name, Created, Status)."""
    states = {}
    for line in run(["dvc", "queue", "status"], repo).stdout.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 4 and fields[1] in QUEUED:
            states[fields[1]] = fields[-1]
    return states


def test_two_queued_experiments_run_in_parallel_into_one_store(tmp_path, make_repo,
                                                               monkeypatch):
    repo, tiny = tiny_dvc_repo(tmp_path, make_repo)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the store must come from DVC_ROOT
    # a first run in the workspace fills DVC's run cache: the queued runs restore fetch,
    # preprocess and sanity from it and run only lr_search and train
    run(["dvc", "repro", "train"], repo)

    flags = [arg for override in tiny for arg in ("-S", override)]
    for name, override in QUEUED.items():
        run(["dvc", "exp", "run", "--queue", "-n", name, *flags, "-S", override, "train"], repo)
    try:
        run(["dvc", "queue", "start", "-j", "2"], repo)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            states = queue_states(repo)
            if states and all(s in ("Success", "Failed") for s in states.values()):
                break
            time.sleep(2)
    finally:
        run(["dvc", "queue", "stop"], repo, check=False)

    logs = {name: run(["dvc", "queue", "logs", name], repo, check=False).stdout[-3000:]
            for name in QUEUED}
    assert queue_states(repo) == {name: "Success" for name in QUEUED}, logs

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["cifar10-babysitting"])
    searches = runs[runs["tags.mlflow.runName"] == "lr_search"]
    by_experiment = dict(zip(searches["tags.dvc_experiment"], searches["run_id"]))
    assert set(QUEUED) <= set(by_experiment)
    for name, trials in (("queued-a", 2), ("queued-b", 4)):
        search = searches[searches["run_id"] == by_experiment[name]].iloc[0]
        assert search["params.search.coarse.trials"] == str(trials)
        children = runs[runs["tags.mlflow.parentRunId"] == search.run_id]
        assert len(children) >= 2 + trials + 2  # probes, a coarse round, the fine round
        train = runs[(runs["tags.stage"] == "train") & (runs["tags.dvc_experiment"] == name)]
        assert len(train) == 1
    assert not (repo / ".dvc/tmp/exps/mlflow.db").exists()
