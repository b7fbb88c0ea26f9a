"""Small TLC-shaped months, for tests and benchmarks that must run where the official months are not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def synthetic_month(
    path: Path, year: int, month: int, n: int = 3000, seed: int = 0, noise_only: bool = False, minutes_per_mile: float = 3.2
) -> Path:
    """A small TLC-shaped green-taxi month whose duration depends on zones and distance (`minutes_per_mile`).

    Odd rides included, as in TLC's own months: short hops with zero distance, trips that end before they start
    or run for hours, odometer glitches of thousands of miles, and pick-ups outside the month.
    """
    rng = np.random.default_rng(seed)
    pu = rng.integers(1, 60, n)
    do = rng.integers(1, 60, n)
    distance = np.round(rng.gamma(2.0, 1.5, n), 2)
    minutes = 2 + minutes_per_mile * distance + (pu % 7) * 0.8 + (do % 5) * 0.6 + rng.normal(0, 1.0, n)
    if noise_only:  # durations unrelated to the features: a model fitted on this is worse
        minutes = rng.uniform(1, 60, n)
    minutes = np.clip(minutes, 1.2, 59)
    start = pd.Timestamp(year=year, month=month, day=1) + pd.to_timedelta(rng.integers(0, 27 * 86400, n), unit="s")
    odd = rng.random(n)
    hop = odd < 0.025  # a ride cancelled at the kerb: same zone, no distance, under a minute
    do, distance, minutes = np.where(hop, pu, do), np.where(hop, 0.0, distance), np.where(hop, rng.uniform(0, 0.9, n), minutes)
    minutes = np.where((odd >= 0.025) & (odd < 0.035), rng.uniform(61, 1400, n), minutes)  # the meter left running
    minutes = np.where((odd >= 0.035) & (odd < 0.04), -rng.uniform(1, 30, n), minutes)  # drop-off before pick-up
    glitch = (odd >= 0.04) & (odd < 0.043)
    distance = np.where(glitch, np.round(rng.uniform(1_000, 250_000, n), 2), distance)  # odometer glitches
    distance[rng.choice(n, 3, replace=False)] = 33884.0  # at least a few, whatever the seed
    start = start.where(~((odd >= 0.043) & (odd < 0.044)), pd.Timestamp("2009-01-01 00:03:25"))
    frame = pd.DataFrame(
        {
            "VendorID": rng.integers(1, 3, n),
            "lpep_pickup_datetime": start,
            "lpep_dropoff_datetime": start + pd.to_timedelta(minutes * 60, unit="s").round("s"),
            "store_and_fwd_flag": "N",
            "RatecodeID": 1.0,
            "PULocationID": pu.astype("int64"),
            "DOLocationID": do.astype("int64"),
            "passenger_count": 1.0,
            "trip_distance": distance,
            "fare_amount": np.round(3 + 2.5 * np.minimum(distance, 100), 2),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path
