"""Replaying a month of real rides through the transformer, with ride ids, so the prediction logs fill."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pandas as pd
import requests

TLC_URL = "https://d37ci6vzurychx.cloudfront.net/trip-data/green_tripdata_{month}.parquet"
PATH = "/v1/models/trip-duration:predict"


def month_file(month: str) -> Path:
    """$DATA_DIR/green_tripdata_<month>.parquet when present, else TLC's file (cached like training does)."""
    if not re.fullmatch(r"\d{4}-\d{2}", month):
        return Path(month)
    data_dir = os.environ.get("DATA_DIR")
    if data_dir and (Path(data_dir) / f"green_tripdata_{month}.parquet").exists():
        return Path(data_dir) / f"green_tripdata_{month}.parquet"
    import pooch

    cache = Path(os.environ.get("DATA_CACHE_DIR", Path.home() / ".cache" / "taxi-mlops"))
    return Path(pooch.retrieve(TLC_URL.format(month=month), known_hash=None, path=cache, progressbar=sys.stderr.isatty()))


def rides(month: str, n: int, seed: int = 0) -> pd.DataFrame:
    """`n` valid rides of the month with a ride_id and the actual duration (for performance checks)."""
    df = pd.read_parquet(month_file(month))
    df["duration"] = (df.lpep_dropoff_datetime - df.lpep_pickup_datetime).dt.total_seconds() / 60
    df = df[
        df.duration.between(1, 60)
        & df.PULocationID.between(1, 265)
        & df.DOLocationID.between(1, 265)
        & df.trip_distance.between(0, 500)
    ]
    label = Path(month).stem.removeprefix("green_tripdata_")
    df = df.sample(min(n, len(df)), random_state=seed)
    df["ride_id"] = [f"{label}-{i}" for i in df.index]
    return df[["ride_id", "PULocationID", "DOLocationID", "trip_distance", "duration"]].reset_index(drop=True)


def instance(row) -> dict:
    return {
        "ride_id": row.ride_id,
        "ride": {"PULocationID": int(row.PULocationID), "DOLocationID": int(row.DOLocationID),
                 "trip_distance": float(row.trip_distance)},
    }  # fmt: skip


def replay(url: str, frame: pd.DataFrame, singles: int = 100, batch: int = 100) -> int:
    """The first `singles` rides one request each (the workshop's way), the rest in batches. Returns rides served."""
    served = 0
    with requests.Session() as session:
        rows = list(frame.itertuples())
        for row in rows[:singles]:
            r = session.post(url + PATH, json=instance(row), timeout=30)
            r.raise_for_status()
            served += 1
        for start in range(singles, len(rows), batch):
            chunk = rows[start : start + batch]
            r = session.post(url + PATH, json={"instances": [instance(x) for x in chunk]}, timeout=60)
            r.raise_for_status()
            served += len(chunk)
    return served
