"""The drift decision on TLC's own months, as a dispatcher's traffic looks: raw rides, days as windows.

Runs when the official months are next to the repository (or in DATA_DIR); `make bench` runs the full counts
(100 and 50 seeds) that these check with fewer.
"""

import os
import warnings
from pathlib import Path

import pandas as pd
import pytest

import ride
from monitoring.drift import DriftTest
from ride.tlc import serving_month

warnings.filterwarnings("ignore")
DATA = Path(os.environ.get("DATA_DIR") or Path(__file__).resolve().parents[2].parent / "shared" / "data" / "nyc-tlc")
COLUMNS = list(ride.FEATURES)


def month(name: str) -> pd.DataFrame:
    try:
        return serving_month(name, DATA)
    except FileNotFoundError:
        pytest.skip(f"real TLC months not present at {DATA}")


def flagged(detector: DriftTest, window: pd.DataFrame) -> bool:
    return any(r.drifted for r in detector.test(window))


@pytest.mark.parametrize("size, seeds", [(5000, 20), (20_000, 5)])
def test_raw_windows_of_the_month_are_not_drift(size, seeds):
    feb = month("2022-02")
    detector = DriftTest(feb, COLUMNS, size)
    alarms = [s for s in range(seeds) if flagged(detector, feb.sample(size, random_state=s)[COLUMNS])]
    assert alarms == [], f"windows of {size} raw rides flagged for seeds {alarms}"


@pytest.mark.parametrize("name", ["2022-02", "2022-01"])
def test_every_day_of_the_month_against_the_month(name, tmp_path):
    rides = month(name)
    days = rides[ride.PICKUP_TIME].dt.strftime("%Y-%m") == name
    rides = rides[days]
    by_day = dict(tuple(rides.groupby(rides[ride.PICKUP_TIME].dt.day)))
    cache = str(tmp_path)  # days of similar size share a calibration
    alarms = [d for d, day in by_day.items() if flagged(DriftTest(rides, COLUMNS, len(day), cache_uri=cache), day)]
    assert len(alarms) <= 1, f"days of {name} flagged: {alarms}"


@pytest.mark.parametrize("size", [5000, 20_000])
def test_a_lockdown_month_is_flagged(size):
    feb, lockdown = month("2022-02"), month("2021-01")
    detector = DriftTest(feb, COLUMNS, size)
    assert all(flagged(detector, lockdown.sample(size, random_state=s)) for s in range(3))
