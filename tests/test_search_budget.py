"""search.budget at the stage level: a trial cap cuts the search in search order, a wall-time
cap stops trials from starting."""

import csv
import json

from search_fixtures import build, run_stage


def test_a_trial_budget_keeps_the_first_trials_and_skips_the_rest(tmp_path, tmp_path_factory):
    ws = build(tmp_path / "ws", ["search.budget.trials=4"], tmp_path_factory)

    result = run_stage(ws, "search.backend=local", "search.workers=2")

    rows = list(csv.DictReader((ws / "results/lr_search/trials.csv").open()))
    assert [(r["stage"], r["round"], r["trial"]) for r in rows] == [
        ("coarse", "0", str(i)) for i in range(4)]
    best = json.loads((ws / "results/lr_search/best.json").read_text())
    assert best["budget_exhausted"] == "trials" and best["stage"] == "coarse"
    assert best["edge_flags"] == [] or not best["edge_flags"][-1]["widened"]
    assert "4 trials (0 from the resume cache" in result.stderr


def test_a_spent_time_budget_starts_no_trial_and_says_what_to_raise(tmp_path,
                                                                      tmp_path_factory):
    ws = build(tmp_path / "ws", ["search.budget.seconds=0.001"], tmp_path_factory)

    result = run_stage(ws, check=False)

    assert result.returncode == 1
    assert "no coarse trial finished" in result.stderr and "search.budget" in result.stderr
    assert not (ws / "results/lr_search/best.json").exists()
