"""Loading a month of TLC trips from a path, an http(s) URL or s3://: its serving population and what training learns from."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

import ride
from ride import store
from ride.registry import MIN_PRODUCTION_RIDES
from ride.tlc import download


class DataError(Exception):
    """A data source the user named cannot be used; the message says which and why."""


@dataclass
class Month:
    source: str
    sha256: str
    rows: int  # as read
    serving: pd.DataFrame  # every ride the transformer would score: features, pick-up time, actual duration (the reference)
    frame: pd.DataFrame  # what training learns from: the serving rides that took 1-60 minutes

    @property
    def rows_used(self) -> int:
        return len(self.frame)


def fetch_bytes(src: str, cache_dir: str) -> bytes:
    if src.startswith(("http://", "https://")):
        try:
            path = download(src, cache_dir)
        except Exception as e:  # requests raises many kinds; all mean "could not download"
            hint = " (offline? point DATA_DIR at local green_tripdata_YYYY-MM.parquet files)" if src.startswith(ride.TLC_URL.split("{")[0]) else ""
            raise DataError(f"{src}: download failed{hint}: {str(e)[:200]}") from None
        return Path(path).read_bytes()
    if src.startswith("s3://"):
        try:
            return store.read_bytes(src)
        except FileNotFoundError:
            raise DataError(f"{src}: no such object") from None
        except Exception as e:
            raise DataError(f"{src}: cannot read from S3: {e}") from None
    path = Path(src.removeprefix("file://"))
    if not path.is_file():
        raise DataError(f"{src}: file not found")
    return path.read_bytes()


def parse(src: str, raw: bytes) -> pd.DataFrame:
    try:
        return store.parse_table(src, raw)
    except ride.SourceError as e:
        raise DataError(str(e)) from None


def prepare(df: pd.DataFrame, src: str = "data") -> tuple[pd.DataFrame, pd.DataFrame]:
    """The month's serving population, and its rides training can learn from (actual duration 1-60 minutes)."""
    try:
        serving = ride.serving_population(df, src)
    except ride.SourceError as e:
        raise DataError(str(e)) from None
    if ride.TARGET not in serving.columns:
        raise DataError(f"{src}: missing columns {ride.PICKUP_COLUMNS[0]}, {ride.DROPOFF_COLUMNS[0]} (for the duration)")
    learnable = ride.learnable(serving)
    if learnable.empty:
        raise DataError(
            f"{src}: no usable rides after filtering ({len(df)} rows read; need duration "
            f"{ride.MIN_DURATION:g}-{ride.MAX_DURATION:g} min, zones {ride.ZONE_MIN}-{ride.ZONE_MAX}, "
            f"distance 0-{ride.MAX_TRIP_DISTANCE:g})"
        )
    return serving, learnable


def load_month(src: str, data_dir: str | None, cache_dir: str) -> Month:
    resolved = ride.resolve_month(src, data_dir)
    raw = fetch_bytes(resolved, cache_dir)
    df = parse(resolved, raw)
    serving, learnable = prepare(df, resolved)
    return Month(resolved, hashlib.sha256(raw).hexdigest(), len(df), serving, learnable)



def load_production(logs: str, actuals: str, since, until, validation_share: float) -> tuple[Month, Month]:
    """The rides the model served in [since, until) whose actual duration arrived: older ones to train on, the
    newest `validation_share` (by time) to validate on. A ride logged more than once counts once."""
    from ride.reader import read_actuals, read_predictions

    try:
        logged = read_predictions(logs, since, until)
        arrived = read_actuals(actuals, since)
    except FileNotFoundError as e:
        raise DataError(str(e)) from None
    except Exception as e:
        raise DataError(f"{logs} / {actuals}: cannot read: {e}") from None
    rides = logged.frame.sort_values("ts", kind="stable").drop_duplicates(ride.RIDE_ID)
    rides = rides.drop(columns=[ride.PREDICTION]).rename(columns={"ts": ride.PICKUP_TIME})
    rides = rides.merge(arrived.frame[[ride.RIDE_ID, ride.TARGET]], on=ride.RIDE_ID, how="left")
    serving = ride.serving_population(rides, logs)
    source = f"{logs} with {actuals}, {since.isoformat()} to {until.isoformat()}"
    if serving.empty:
        raise DataError(f"{source}: no logged ride in the window")
    boundary = serving[ride.PICKUP_TIME].quantile(1 - validation_share)
    parts = serving[serving[ride.PICKUP_TIME] < boundary], serving[serving[ride.PICKUP_TIME] >= boundary]
    months = []
    # The drift reference of a model trained here is the whole window: the population it was built from.
    for name, part, reference in zip(("older", "newest"), parts, (parts[0], serving)):
        learnable = ride.learnable(part.reset_index(drop=True))
        if len(learnable) < MIN_PRODUCTION_RIDES:
            raise DataError(
                f"{source}: only {len(learnable)} {name} rides have an actual duration of 1-60 min "
                f"({len(part)} logged, {int(part[ride.TARGET].notna().sum())} with actuals); need {MIN_PRODUCTION_RIDES}"
            )
        digest = hashlib.sha256("\n".join(sorted(part[ride.RIDE_ID].astype(str))).encode()).hexdigest()
        months.append(Month(f"{source} ({name} {len(part)} rides)", digest, len(part), reference.reset_index(drop=True), learnable))
    return months[0], months[1]
