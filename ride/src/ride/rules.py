"""What a ride is: the model's features and their limits, what the transformer scores, what training learns from.

Two populations, one rule each. The *serving population* is every ride the transformer accepts: valid features,
whatever the trip turns out to take (nobody knows a ride's duration when it is requested). Training learns only
from rides whose actual duration was 1-60 minutes (`learnable`). Drift is judged on the serving population;
error metrics belong to the learnable rides.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

FEATURES = ("PULocationID", "DOLocationID", "trip_distance")  # the model's input columns, in this order
ZONE_COLUMNS = FEATURES[:2]
RIDE_ID = "ride_id"
TARGET = "duration"  # minutes from pick-up to drop-off
PREDICTION = "prediction"
PICKUP_TIME = "pickup_datetime"

ZONE_MIN, ZONE_MAX = 1, 265
MAX_TRIP_DISTANCE = 500.0  # miles; TLC months hold odometer glitches of 10^5 miles
MIN_DURATION, MAX_DURATION = 1.0, 60.0  # the workshop's filter on what training learns from
MAX_RIDE_ID_LENGTH = 128
# Explicit code points, so that Python and JSON Schema (ECMA-262, transformer/openapi.yaml) mean the same thing.
RIDE_ID_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
RIDE_ID_VISIBLE = re.compile(r"[^\x00-\x20\x7f]")

# TLC's names for the trip's times: green taxis lpep_, yellow taxis tpep_.
PICKUP_COLUMNS = ("lpep_pickup_datetime", "tpep_pickup_datetime")
DROPOFF_COLUMNS = ("lpep_dropoff_datetime", "tpep_dropoff_datetime")


class RideError(ValueError):
    """A ride that cannot be scored. The message names the field; `reason` is the field alone (a metrics label)."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.reason = path.rsplit(".", 1)[-1]


class SourceError(ValueError):
    """A table of rides that cannot be used at all (missing columns); the message names the source."""


@dataclass(frozen=True)
class Ride:
    ride_id: str
    PULocationID: int
    DOLocationID: int
    trip_distance: float


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def zone_problem(value) -> str | None:
    if not _is_number(value) or (isinstance(value, float) and not value.is_integer()):
        return f"must be an integer zone id, got {value!r}"
    if not ZONE_MIN <= value <= ZONE_MAX:
        return f"must be a zone id {ZONE_MIN}-{ZONE_MAX}, got {value}"
    return None


def distance_problem(value) -> str | None:
    if not _is_number(value) or not math.isfinite(value):
        return f"must be a finite number of miles, got {value!r}"
    if not 0 <= value <= MAX_TRIP_DISTANCE:
        return f"must be between 0 and {MAX_TRIP_DISTANCE:g} miles, got {value}"
    return None


PROBLEMS = {"PULocationID": zone_problem, "DOLocationID": zone_problem, "trip_distance": distance_problem}


def ride_id_problem(value) -> str | None:
    if not isinstance(value, str):
        return f"must be a string (or an integer), got {type(value).__name__}"
    if len(value) > MAX_RIDE_ID_LENGTH:
        return f"longer than {MAX_RIDE_ID_LENGTH} characters"
    if RIDE_ID_CONTROL.search(value):
        return "must not contain control characters"
    if not RIDE_ID_VISIBLE.search(value):
        return "must not be empty or only spaces"
    return None


def _as_ride_id(value):
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # the workshop sent integer ids; they are logged as strings
    return value


def usable_ride_id(item) -> str | None:
    """The item's ride_id when it is one the transformer can echo back, else None."""
    value = _as_ride_id(item.get(RIDE_ID)) if isinstance(item, dict) else None
    return value if ride_id_problem(value) is None else None


def parse_ride(item) -> Ride:
    """`{"ride_id": …, "ride": {PULocationID, DOLocationID, trip_distance}}` → Ride, or RideError naming the field."""
    if not isinstance(item, dict):
        raise RideError("instance", "must be an object with ride_id and ride")
    for key in (RIDE_ID, "ride"):
        if key not in item:
            raise RideError(key, "missing")
    ride = item["ride"]
    if not isinstance(ride, dict):
        raise RideError("ride", f"must be an object with {', '.join(FEATURES)}")
    for field in FEATURES:
        if field not in ride:
            raise RideError(f"ride.{field}", "missing")
    ride_id = _as_ride_id(item[RIDE_ID])
    problem = ride_id_problem(ride_id)
    if problem:
        raise RideError(RIDE_ID, problem)
    for field in FEATURES:
        problem = PROBLEMS[field](ride[field])
        if problem:
            raise RideError(f"ride.{field}", problem)
    return Ride(ride_id, int(ride["PULocationID"]), int(ride["DOLocationID"]), float(ride["trip_distance"]))


# -- tables of rides (pandas DataFrames; the caller's pandas) --------------------------------------------------


def serving_mask(table):
    """Which rows the transformer would score: the same checks as `parse_ride`, applied value by value."""
    keep = None
    for field, problem in PROBLEMS.items():
        ok = table[field].map(lambda value, problem=problem: problem(value) is None).astype(bool)
        keep = ok if keep is None else keep & ok
    return keep


def _first(table, names: tuple[str, ...]) -> str | None:
    return next((c for c in names if c in table.columns), None)


def serving_population(table, source: str = "rides", keep: tuple[str, ...] = ()):
    """The rides of a table (a TLC month, a reference artifact, a file of rides) that the transformer would score.

    Features typed as the model takes them; `ride_id`, `prediction` and the columns in `keep` kept as they are
    when present; the pick-up time and the actual duration in minutes kept, or derived from TLC's columns, when
    the table has them. No duration filter: that is `learnable`'s.
    """
    import pandas as pd

    missing = [c for c in FEATURES if c not in table.columns]
    if missing:
        raise SourceError(f"{source}: missing columns {', '.join(missing)}")
    rows = table[serving_mask(table).to_numpy()].reset_index(drop=True)
    out = rows[list(FEATURES)].astype({"PULocationID": "int64", "DOLocationID": "int64", "trip_distance": "float64"})
    for column in (RIDE_ID, PREDICTION, *keep):
        if column in rows.columns:
            out[column] = rows[column]
    pickup = _first(rows, (PICKUP_TIME, *PICKUP_COLUMNS))
    if pickup:
        out[PICKUP_TIME] = pd.to_datetime(rows[pickup], errors="coerce")
    dropoff = _first(rows, DROPOFF_COLUMNS)
    if TARGET in rows.columns:
        out[TARGET] = pd.to_numeric(rows[TARGET], errors="coerce")
    elif pickup and dropoff:
        started, ended = pd.to_datetime(rows[pickup], errors="coerce"), pd.to_datetime(rows[dropoff], errors="coerce")
        out[TARGET] = (ended - started).dt.total_seconds() / 60
    return out


def learnable(rides):
    """The training filter: rides of the serving population whose actual duration was 1-60 minutes."""
    if TARGET not in rides.columns:
        return rides.iloc[0:0]
    return rides[rides[TARGET].between(MIN_DURATION, MAX_DURATION)].reset_index(drop=True)
