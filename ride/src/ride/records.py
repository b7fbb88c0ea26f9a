"""The records the system keeps in S3, as gzipped JSON lines, and where.

Prediction log: one record per scored ride, written by the transformer under
`<PREDICTION_LOG_URI>/model=<name>/date=YYYY-MM-DD/hour=HH/<uuid>.jsonl.gz` (the UTC hour of the object's first
record). Actuals: one record per finished ride, written by whatever dispatches the rides, under
`<ACTUALS_URI>/date=YYYY-MM-DD/hour=HH/<uuid>.jsonl.gz` (the UTC hour they arrived, as Kinesis Firehose
partitions). Object names are random: no request data ever shapes a key.
"""

from __future__ import annotations

import gzip
import json
import re
import uuid
from datetime import datetime, timezone

from ride.rules import PREDICTION, RIDE_ID, TARGET, Ride

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
# Late, missing and duplicate actuals are normal: the last one to arrive for a ride_id wins.
ACTUAL_FIELDS = {
    RIDE_ID: str,
    "dropoff_datetime": str,  # UTC ISO-8601
    TARGET: float,  # minutes from pick-up to drop-off, whatever they were
}
LOG_KEY = re.compile(r"model=(?P<model>[^/]+)/date=(?P<date>\d{4}-\d{2}-\d{2})/hour=(?P<hour>\d{2})/[^/]+$")
PARTITION = re.compile(r"date=(?P<date>\d{4}-\d{2}-\d{2})/hour=(?P<hour>\d{2})/[^/]+$")


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


def actuals_key(ts: str) -> str:
    """The object key (below the actuals URI) for actuals that arrived at `ts`; keys sort in order of arrival."""
    return f"date={ts[:10]}/hour={ts[11:13]}/{ts[11:].replace(':', '')}-{uuid.uuid4().hex}.jsonl.gz"


def jsonl_gz(records: list[dict]) -> bytes:
    """Records as one gzipped JSON-lines object."""
    lines = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
    return gzip.compress(lines.encode(), compresslevel=5)
