"""The drift decision on synthetic data: calibrated false alarms, and real shifts found."""

import warnings

import numpy as np
import pandas as pd
import pytest

from monitoring.drift import Calibrated, size_bucket
from monitoring.inputs import FEATURES, PREDICTION

warnings.filterwarnings("ignore")
COLUMNS = FEATURES + [PREDICTION]
ZONE_WEIGHTS = np.random.default_rng(42).pareto(1.2, 265) + 0.01  # a few busy zones, a long sparse tail
ZONE_WEIGHTS /= ZONE_WEIGHTS.sum()


def rides(n, seed, zone_weights=ZONE_WEIGHTS, distance_scale=1.0, prediction_shift=0.0):
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
    return frame


@pytest.fixture(scope="module")
def reference():
    return rides(30_000, seed=0)


@pytest.mark.parametrize("window", [300, 3000])
def test_same_distribution_windows_rarely_alarm(reference, window):
    detector = Calibrated(reference, COLUMNS, window, false_alarm_rate=0.005)
    alarms = sum(any(r.drifted for r in detector.test(rides(window, seed=1000 + s))) for s in range(300))
    assert alarms / 300 <= 0.01, f"{alarms} false alarms in 300 windows of {window}"


def shifted_zones():
    weights = np.roll(ZONE_WEIGHTS, 40)  # the busy zones move elsewhere
    return weights / weights.sum()


@pytest.mark.parametrize(
    "name, kwargs, column",
    [
        ("zones", {"zone_weights": shifted_zones()}, "PULocationID"),
        ("distances", {"distance_scale": 1.3}, "trip_distance"),
        ("predictions", {"prediction_shift": 3.0}, PREDICTION),
    ],
)
def test_real_shifts_are_detected(reference, name, kwargs, column):
    detector = Calibrated(reference, COLUMNS, 2000)
    results = {r.column: r for r in detector.test(rides(2000, seed=7, **kwargs))}
    assert results[column].drifted, f"{name} shift not detected: {results[column]}"


def test_size_bucket_keeps_two_significant_digits():
    assert [size_bucket(n) for n in (7, 123, 4567, 1_234_567)] == [7, 120, 4600, 1_200_000]
