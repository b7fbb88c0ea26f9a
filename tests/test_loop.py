"""The loop closed on one machine (`make loop`), on small synthetic months: an older model whose trips ran faster
serves a newer month, the drift job asks for retraining, the challenger trained on the logged rides and their
actuals is promoted and served, a worse challenger is turned down, and two rollbacks return to where it was."""

from __future__ import annotations

import json

from harness import synthetic_month
from test_demo import local_env, run_local


def test_the_loop_retrains_promotes_a_better_model_and_rolls_back(tmp_path):
    months = tmp_path / "months"
    # Before: 2 minutes a mile. Now: 3.2. The older model underestimates every ride the new month sends.
    synthetic_month(months / "green_tripdata_2029-01.parquet", 2029, 1, seed=11, minutes_per_mile=2.0)
    synthetic_month(months / "green_tripdata_2029-02.parquet", 2029, 2, seed=12, minutes_per_mile=2.0)
    synthetic_month(months / "green_tripdata_2030-05.parquet", 2030, 5, n=6000, seed=13)
    env = {**local_env({"train": months / "x"}, tmp_path), "TRAIN_MONTH": "2029-01", "VAL_MONTH": "2029-02",
           "TRAFFIC_MONTH": "2030-05", "TRAFFIC_RIDES": "2500"}  # fmt: skip
    result = run_local("loop", env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])

    before, after, again = out["phases"]
    assert before["version"] == "1" and before["retrain"]["wanted"], before  # the retrain is not skipped
    assert before["degraded"] is True and before["rmse_ratio"] > 1.2
    challenger = out["challenger"]
    assert challenger["promoted"] and challenger["champion"] == "1" and challenger["version"] == "2"
    assert challenger["rmse"] < challenger["champion_rmse"]  # beat the serving model on the same rides
    assert after["version"] == "2" and not after["degraded"]

    worse = out["worse_challenger"]  # a challenger from the older month again: the gate must turn it down
    assert worse["promoted"] is False and worse["rmse"] > worse["champion_rmse"] and worse["champion"] == "2"

    assert out["rollback"] == {**out["rollback"], "version": "1", "previous": "2"}  # @previous kept what it replaced
    assert again["version"] == "1"
    same = out["live_rmse_same_rides"]
    assert same["challenger"] < same["older_model"], same  # the same replayed rides, the two versions
    assert out["second_rollback"]["version"] == "2" and out["second_rollback"]["previous"] == "1"
