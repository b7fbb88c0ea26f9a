"""When the drift job asks for retraining: pure decisions, no cluster."""

from datetime import datetime, timedelta, timezone

from monitoring.retrain import decide

NOW = datetime(2030, 1, 2, 12, tzinfo=timezone.utc)
DAY = timedelta(hours=24)


def judged(drift=False, degraded=None, joined=5000):
    return {"model_version": "3", "drift": drift, "performance": {"degraded": degraded, "n_joined": joined}}


def test_drift_or_degradation_with_enough_actuals_asks_for_retraining():
    assert decide(judged(drift=True), 200, None, DAY, NOW) == {
        "wanted": True, "reason": "version 3: data drift (5,000 rides with actuals)"}  # fmt: skip
    assert decide(judged(degraded=True), 200, None, DAY, NOW)["wanted"]


def test_nothing_wrong_or_nothing_to_learn_from_is_no():
    assert decide(judged(), 200, None, DAY, NOW)["reason"] == "version 3: no drift, live error not degraded"
    no = decide(judged(drift=True, joined=150), 200, None, DAY, NOW)
    assert not no["wanted"] and "only 150 rides with actuals" in no["reason"]
    assert not decide(None, 200, None, DAY, NOW)["wanted"]


def test_a_rejected_challenger_starts_a_cool_down():
    recent = (NOW - timedelta(hours=3)).isoformat().replace("+00:00", "Z")
    no = decide(judged(drift=True), 200, recent, DAY, NOW)
    assert not no["wanted"] and "cool-down until 2030-01-03T09:00:00+00:00" in no["reason"]
    old = (NOW - timedelta(hours=30)).isoformat()
    assert decide(judged(drift=True), 200, old, DAY, NOW)["wanted"]


def test_the_registry_is_asked_only_when_retraining_is_wanted_and_its_failure_starts_nothing():
    from types import SimpleNamespace

    from monitoring.retrain import trigger

    settings = SimpleNamespace(retrain_cooldown=DAY, retrain_cronjob="")

    def unreachable():
        raise ConnectionError("registry down\nsecond line")

    assert trigger(judged(), settings, unreachable)["reason"] == "version 3: no drift, live error not degraded"
    down = trigger(judged(drift=True), settings, unreachable)
    assert not down["wanted"] and down["job"] is None
    assert down["reason"].endswith("not started: the registry cannot say when a challenger was last rejected: registry down")
    few = trigger(judged(drift=True, joined=999), settings, unreachable)  # training needs 1,000: 200 per side of 80/20
    assert not few["wanted"] and "retraining needs 1,000" in few["reason"]
    assert trigger(judged(drift=True), settings, lambda: None)["wanted"]
