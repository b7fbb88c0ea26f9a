"""One definition of a ride, imported by training, the transformer, the drift job, `local` (the system on one
machine) and the tests."""

from ride.records import ACTUAL_FIELDS, LOG_FIELDS, LOG_KEY, actuals_key, jsonl_gz, log_key, log_record, utc_timestamp
from ride.rules import (
    DROPOFF_COLUMNS,
    FEATURES,
    MAX_DURATION,
    MAX_RIDE_ID_LENGTH,
    MAX_TRIP_DISTANCE,
    MIN_DURATION,
    PICKUP_COLUMNS,
    PICKUP_TIME,
    PREDICTION,
    RIDE_ID,
    TARGET,
    ZONE_COLUMNS,
    ZONE_MAX,
    ZONE_MIN,
    Ride,
    RideError,
    SourceError,
    learnable,
    parse_ride,
    serving_mask,
    serving_population,
)
from ride.tlc import TLC_URL, resolve_month

__all__ = [
    "ACTUAL_FIELDS", "actuals_key", "jsonl_gz", "DROPOFF_COLUMNS", "FEATURES", "LOG_FIELDS", "LOG_KEY", "MAX_DURATION", "MAX_RIDE_ID_LENGTH", "MAX_TRIP_DISTANCE",
    "MIN_DURATION", "PICKUP_COLUMNS", "PICKUP_TIME", "PREDICTION", "RIDE_ID", "TARGET", "TLC_URL", "ZONE_COLUMNS",
    "ZONE_MAX", "ZONE_MIN", "Ride", "RideError", "SourceError", "learnable", "log_key", "log_record", "parse_ride",
    "resolve_month", "serving_mask", "serving_population", "utc_timestamp",
]  # fmt: skip
