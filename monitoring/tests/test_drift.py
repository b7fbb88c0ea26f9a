"""The drift decision on synthetic data: calibrated on contiguous windows, real shifts found, power reported."""

import warnings

import numpy as np
import pandas as pd
import pytest

from monitoring.drift import DriftTest, judged, size_bucket
from ride import FEATURES, PICKUP_TIME, PREDICTION

warnings.filterwarnings("ignore")
COLUMNS = list(FEATURES) + [PREDICTION]
ZONE_WEIGHTS = np.random.default_rng(42).pareto(1.2, 265) + 0.01  # a few busy zones, a long sparse tail
ZONE_WEIGHTS /= ZONE_WEIGHTS.sum()
WEEKEND_WEIGHTS = np.roll(ZONE_WEIGHTS, 3) * 0.3 + ZONE_WEIGHTS * 0.7  # weekends go to other places


def rides(n, seed, zone_weights=ZONE_WEIGHTS, distance_scale=1.0, prediction_shift=0.0, start="2030-01-01"):
    rng = np.random.default_rng(seed)
    distance = np.round(rng.gamma(1.8, 1.7, n) * distance_scale, 2)
    frame = pd.DataFrame(
        {
            "PULocationID": rng.choice(np.arange(1, 266), n, p=zone_weights),
            "DOLocationID": rng.choice(np.arange(1, 266), n, p=zone_weights),
            "trip_distance": distance,
        }
    )
    frame[PREDICTION] = 4 + 3.1 * distance + rng.normal(0, 2, n) + prediction_shift
    frame[PICKUP_TIME] = pd.Timestamp(start) + pd.to_timedelta(np.sort(rng.uniform(0, 86400, n)), unit="s")
    return frame


def month(days=28, per_day=1000):
    """Days whose zone mix depends on the day of the week, as real ones do."""
    frames = []
    for d in range(days):
        weekend = d % 7 in (5, 6)
        day = rides(per_day, seed=100 + d, zone_weights=WEEKEND_WEIGHTS if weekend else ZONE_WEIGHTS)
        day[PICKUP_TIME] += pd.Timedelta(days=d)
        frames.append(day)
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def reference():
    return rides(30_000, seed=0)


@pytest.mark.parametrize("window", [300, 3000])
def test_same_distribution_windows_rarely_alarm(reference, window):
    detector = DriftTest(reference, COLUMNS, window)
    alarms = sum(any(r.drifted for r in detector.test(rides(window, seed=1000 + s))) for s in range(300))
    assert alarms / 300 <= 0.02, f"{alarms} false alarms in 300 windows of {window}"


def test_days_of_a_month_are_judged_like_days_not_like_random_samples():
    """Weekend days differ from the month's mix; calibrated on contiguous windows, no ordinary day alarms."""
    reference = month()
    detector = DriftTest(reference, COLUMNS, 1000)
    flagged = [d for d in range(28) if any(r.drifted for r in detector.test(reference.iloc[d * 1000 : (d + 1) * 1000]))]
    assert len(flagged) <= 1, f"days flagged: {flagged}"
    assert detector.calibration.windows == 100 and detector.calibration.ordered_by == "pick-up time"
    # The same days shuffled into the reference's row order lose what calibration needs, and alarm on weekends.
    iid = DriftTest(reference.drop(columns=[PICKUP_TIME]).sample(frac=1, random_state=0), COLUMNS, 1000)
    weekends = [d for d in range(28) if any(r.drifted for r in iid.test(reference.iloc[d * 1000 : (d + 1) * 1000]))]
    assert len(weekends) >= 4, "i.i.d. calibration was expected to alarm on weekend days"


@pytest.mark.parametrize(
    "name, kwargs, column",
    [
        ("zones", {"zone_weights": np.roll(ZONE_WEIGHTS, 40)}, "PULocationID"),
        ("distances", {"distance_scale": 1.3}, "trip_distance"),
        ("predictions", {"prediction_shift": 3.0}, PREDICTION),
    ],
)
def test_real_shifts_are_detected(reference, name, kwargs, column):
    detector = DriftTest(reference, COLUMNS, 2000)
    results = {r.column: r for r in detector.test(rides(2000, seed=7, **kwargs))}
    assert results[column].drifted, f"{name} shift not detected: {results[column]}"


def test_detection_power_is_reported_for_stated_shifts(reference):
    power = DriftTest(reference, COLUMNS, 2000).calibration.power
    assert set(power) == {"longer_trips", "moved_zones"}
    assert power["longer_trips"] >= 0.9 and power["moved_zones"] >= 0.9


def test_calibration_is_cached_by_everything_that_changes_it(reference, tmp_path):
    first = DriftTest(reference, COLUMNS, 2000, cache_uri=str(tmp_path))
    assert len(list(tmp_path.glob("*.json"))) == 1
    again = DriftTest(reference, COLUMNS, 2040, cache_uri=str(tmp_path))  # same size bucket: read, not computed
    assert again.calibration == first.calibration and len(list(tmp_path.glob("*.json"))) == 1
    DriftTest(reference, COLUMNS, 300, cache_uri=str(tmp_path))  # another size pools other zones: its own entry
    DriftTest(reference, COLUMNS, 2000, false_alarm_rate=0.01, cache_uri=str(tmp_path))
    assert len(list(tmp_path.glob("*.json"))) == 3


def test_a_window_larger_than_the_calibration_is_judged_on_an_even_sample(reference):
    detector = DriftTest(reference, COLUMNS, 50_000)
    assert detector.window_size == 10_000  # a third of the reference
    assert len(judged(rides(50_000, seed=3), detector.window_size)) == 10_000


def test_size_bucket_keeps_two_significant_digits():
    assert [size_bucket(n) for n in (7, 123, 4567, 1_234_567)] == [7, 120, 4600, 1_200_000]
