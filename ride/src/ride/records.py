"""The prediction log: one record per scored ride, and where it is kept.

Objects live under `<PREDICTION_LOG_URI>/model=<name>/date=YYYY-MM-DD/hour=HH/<uuid>.jsonl.gz`, partitioned by the
UTC hour of their first record. Object names are random: no request data ever shapes a key.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timezone

from ride.rules import PREDICTION, RIDE_ID, Ride

# Field name -> JSON type, in the order records are written.
LOG_FIELDS = {
    "record_id": str,  # delivery is at-least-once: deduplicate on this
    RIDE_ID: str,
    "request_id": str,
    "ts": str,  # when the ride was scored, UTC ISO-8601
    "model_name": str,
    "model_version": str,
    "PULocationID": int,
    "DOLocationID": int,
    "trip_distance": float,
    PREDICTION: float,
    "latency_ms": float,
}
LOG_KEY = re.compile(r"model=(?P<model>[^/]+)/date=(?P<date>\d{4}-\d{2}-\d{2})/hour=(?P<hour>\d{2})/[^/]+$")


def utc_timestamp(when: datetime | None = None) -> str:
    """UTC ISO-8601 to the millisecond, with a Z: `2026-11-28T09:00:00.123Z`."""
    when = when or datetime.now(timezone.utc)
    return when.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def log_record(
    ride: Ride, prediction: float, *, model_name: str, model_version: str, request_id: str, ts: str, latency_ms: float
) -> dict:
    return {
        "record_id": uuid.uuid4().hex,
        RIDE_ID: ride.ride_id,
        "request_id": request_id,
        "ts": ts,
        "model_name": model_name,
        "model_version": model_version,
        "PULocationID": ride.PULocationID,
        "DOLocationID": ride.DOLocationID,
        "trip_distance": ride.trip_distance,
        PREDICTION: prediction,
        "latency_ms": round(latency_ms, 3),
    }


def log_key(model_name: str, ts: str) -> str:
    """The object key (below the log URI) for records whose first one was scored at `ts`."""
    return f"model={model_name}/date={ts[:10]}/hour={ts[11:13]}/{uuid.uuid4().hex}.jsonl.gz"
