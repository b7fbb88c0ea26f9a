"""Replaying a month of TLC rides through the transformer the way a dispatcher sends them.

Every ride in pick-up order, unfiltered: short hops, meter glitches and all. Nobody knows a ride's duration
when it is requested, so nothing is filtered on it; rides the transformer cannot score come back as errors
and are counted by the field at fault.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import requests

import ride
from ride import store
from ride.tlc import CACHE_DIR, download

PATH = "/v1/models/trip-duration:predict"


def month_file(month: str) -> Path:
    """A month YYYY-MM ($DATA_DIR copy, else downloaded from TLC and cached as training does) or a file path."""
    resolved = ride.resolve_month(month, os.environ.get("DATA_DIR"))
    if not resolved.startswith(("http://", "https://")):
        return Path(resolved)
    return download(resolved, os.environ.get("DATA_CACHE_DIR", CACHE_DIR))


def rides(month: str, n: int | None = None) -> pd.DataFrame:
    """The month's first `n` rides (all when None) in pick-up order, as TLC recorded them, each with a ride_id.

    Also the actual duration in minutes (drop-off minus pick-up, whatever it is) and the drop-off time, which a
    dispatcher learns when the ride ends.
    """
    path = month_file(month)
    table = pd.read_parquet(path)
    pickup = next(c for c in ride.PICKUP_COLUMNS if c in table.columns)
    dropoff = next(c for c in ride.DROPOFF_COLUMNS if c in table.columns)
    table = table.sort_values(pickup, kind="stable")
    if n is not None:
        table = table.head(n)
    label = path.stem.removeprefix("green_tripdata_")
    return pd.DataFrame(
        {
            ride.RIDE_ID: [f"{label}-{i}" for i in table.index],
            **{c: table[c].to_numpy() for c in ride.FEATURES},
            ride.PICKUP_TIME: table[pickup].to_numpy(),
            "dropoff_datetime": table[dropoff].to_numpy(),
            ride.TARGET: ((table[dropoff] - table[pickup]).dt.total_seconds() / 60).to_numpy(),
        }
    ).reset_index(drop=True)


def _json_value(value):
    """What a JSON client sends: numbers as they are, a missing value (NaN) as null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if hasattr(value, "item") else value


def instance(row) -> dict:
    return {"ride_id": row.ride_id, "ride": {c: _json_value(getattr(row, c)) for c in ride.FEATURES}}


def reason(error: str) -> str:
    """The field at fault in an error message: `ride.trip_distance: must be …` → `trip_distance`."""
    return error.split(":", 1)[0].rsplit(".", 1)[-1]


@dataclass
class Replay:
    scored: dict[str, float] = field(default_factory=dict)  # ride_id -> predicted duration
    rejected: Counter = field(default_factory=Counter)  # field at fault -> rides

    @property
    def summary(self) -> str:
        why = ", ".join(f"{r} {n:,}" for r, n in self.rejected.most_common())
        return f"{len(self.scored):,} scored, {sum(self.rejected.values()):,} rejected" + (f" ({why})" if why else "")


def write_actuals(uri: str, frame: pd.DataFrame, credentials: dict | None = None, per_object: int = 1000) -> int:
    """What a dispatch system reports once rides end: ride_id, drop-off time, minutes taken, under `uri` (the
    Kinesis-Firehose-to-S3 pattern), whatever the model made of them, as the dispatcher's S3 user (`credentials`,
    else the environment's). Returns how many were written."""
    arrived = ride.utc_timestamp()
    records = [
        {ride.RIDE_ID: r.ride_id,
         "dropoff_datetime": None if pd.isna(r.dropoff_datetime) else ride.utc_timestamp(pd.Timestamp(r.dropoff_datetime, tz="UTC")),
         ride.TARGET: None if pd.isna(r.duration) else float(r.duration)}
        for r in frame.itertuples()
    ]  # fmt: skip
    for start in range(0, len(records), per_object):
        body = ride.jsonl_gz(records[start : start + per_object])
        store.write_bytes(store.join(uri, ride.actuals_key(arrived)), body, credentials)
    return len(records)


def replay(url: str, frame: pd.DataFrame, singles: int = 100, batch: int = 100) -> Replay:
    """The first `singles` rides one request each (the workshop's way), the rest in batches of `batch`."""
    result = Replay()
    rows = list(frame.itertuples())
    with requests.Session() as session:
        for row in rows[:singles]:
            r = session.post(url + PATH, json=instance(row), timeout=30)
            if r.status_code == 400:
                result.rejected[reason(r.json()["error"])] += 1
                continue
            r.raise_for_status()
            result.scored[row.ride_id] = r.json()["prediction"]["duration"]
        for start in range(singles, len(rows), batch):
            chunk = rows[start : start + batch]
            r = session.post(url + PATH, json={"instances": [instance(x) for x in chunk]}, timeout=60)
            r.raise_for_status()
            for row, item in zip(chunk, r.json()["predictions"]):
                if "error" in item:
                    result.rejected[reason(item["error"])] += 1
                else:
                    result.scored[row.ride_id] = item["duration"]
    return result
