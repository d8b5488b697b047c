"""MLflow under concurrency: 8 trials at once into one SQLite store, every point accounted for.

Two searches run side by side against the same store, each with 4 local workers: 8 trials in
flight and two writing processes. Every trial must be a nested run of its own search with
exactly the points its training produced.
"""

import csv
import re

from search_fixtures import (
    STEPS_PER_EPOCH,
    build,
    outputs,
    stage_env,
    start_stage,
    uri,
)

WIDE = ["search.coarse.trials=16", "search.coarse.lr=[1e-3,1e1]", "search.max_widen=0",
        "search.fine.trials=8", "search.fine.epochs=3", "search.backend=local",
        "search.workers=4"]
KEYS = ("loss", "train_acc", "val_acc", "seconds")
EPOCHS = 3  # of coarse (SEARCH) and fine (WIDE) trials alike


def expected_points(row: dict, epochs: int = EPOCHS) -> dict[str, int]:
    """Points a trial logs: a loss per step taken, accuracies per epoch finished."""
    if row["status"] == "ok":
        steps, finished = epochs * STEPS_PER_EPOCH, epochs
    elif row["status"] == "stopped":
        steps, finished = STEPS_PER_EPOCH, 1
    else:  # diverged at step k: steps 0..k-1 were taken and logged
        steps = int(re.search(r"exploded at step (\d+)", row["reason"]).group(1))
        finished = steps // STEPS_PER_EPOCH
    return {"loss": steps, "train_acc": finished, "val_acc": finished, "seconds": 1}


def test_eight_concurrent_trials_in_one_store_lose_no_point(tmp_path, tmp_path_factory):
    shared = tmp_path / "shared"
    first = build(tmp_path / "a", WIDE, tmp_path_factory)
    second = build(tmp_path / "b", WIDE, tmp_path_factory)
    shared.mkdir()
    (first / "mlflow.db").rename(shared / "mlflow.db")
    env = {ws: stage_env(ws, MLFLOW_TRACKING_URI=uri(shared)) for ws in (first, second)}

    stages = [start_stage(ws, env=env[ws]) for ws in (first, second)]
    results = [stage.communicate(timeout=600) for stage in stages]

    for stage, (_, err) in zip(stages, results):
        assert stage.returncode == 0, err[-3000:]
        assert "database is locked" not in err
    assert outputs(first) == outputs(second)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri(shared))
    experiment = client.get_experiment_by_name("cifar10-babysitting")
    runs = client.search_runs([experiment.experiment_id], max_results=5000)
    parents = [r for r in runs if r.info.run_name == "lr_search"]
    rows = list(csv.DictReader((first / "results/lr_search/trials.csv").open()))
    assert len(parents) == 2 and len(rows) == 16 + 8

    total = 0
    for parent in parents:
        kids = {r.info.run_name: r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
        assert len(kids) == 2 + len(rows)
        for row in rows:
            run = kids[f"{row['stage']}_{row['round']}_{int(row['trial']):03d}"]
            want = expected_points(row)
            got = {key: len(client.get_metric_history(run.info.run_id, key)) for key in KEYS}
            assert got == want, row
            assert run.data.tags["status"] == row["status"]
            total += sum(got.values())
    assert total == 2 * sum(sum(expected_points(r).values()) for r in rows)
