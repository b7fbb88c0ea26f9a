"""What the drift job compares: the reference set and the current window (prediction logs or rides)."""

from __future__ import annotations

import gzip
import io
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.json as pa_json

from monitoring import storage

FEATURES = ["PULocationID", "DOLocationID", "trip_distance"]
ZONES = ["PULocationID", "DOLocationID"]
PREDICTION = "prediction"
TARGET = "duration"
ZONE_MIN, ZONE_MAX = 1, 265
MAX_TRIP_DISTANCE = 500.0

LOG_SCHEMA = pa.schema(
    [
        ("record_id", pa.string()),
        ("ride_id", pa.string()),
        ("request_id", pa.string()),
        ("ts", pa.string()),
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("PULocationID", pa.int64()),
        ("DOLocationID", pa.int64()),
        ("trip_distance", pa.float64()),
        ("prediction", pa.float64()),
        ("latency_ms", pa.float64()),
    ]
)
REQUIRED_LOG_FIELDS = ["record_id", "ts", "model_version", *FEATURES, PREDICTION]
PARTITION = re.compile(r"date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})/")


class InputError(Exception):
    """An input the user named cannot be used; the message says which and why."""


@dataclass
class Reference:
    frame: pd.DataFrame  # FEATURES [+ prediction] [+ duration]
    source: str
    model_version: str | None = None
    training_rmse: float | None = None


@dataclass
class Current:
    frame: pd.DataFrame
    source: str
    model_version: str | None = None
    objects: int = 0
    unreadable: list[str] = field(default_factory=list)
    duplicates: int = 0
    other_versions: dict = field(default_factory=dict)


def read_table(src: str) -> pd.DataFrame:
    name = src.lower()
    try:
        raw = storage.read_bytes(src)
    except FileNotFoundError:
        raise InputError(f"{src}: file not found") from None
    except Exception as e:
        raise InputError(f"{src}: cannot read: {e}") from None
    try:
        if name.endswith(".parquet"):
            return pd.read_parquet(io.BytesIO(raw))
        if name.endswith((".csv", ".csv.gz")):
            return pd.read_csv(io.BytesIO(raw), compression="gzip" if name.endswith(".gz") else None)
    except Exception as e:
        raise InputError(f"{src}: cannot parse: {e}") from None
    raise InputError(f"{src}: unknown format (expected .parquet, .csv or .csv.gz)")


def clean_rides(df: pd.DataFrame, src: str) -> pd.DataFrame:
    """Rides with valid features; a TLC month also gets its duration, kept within training's 1-60 min."""
    missing = [c for c in FEATURES if c not in df.columns]
    if missing:
        raise InputError(f"{src}: missing columns {', '.join(missing)}")
    out = pd.DataFrame({c: pd.to_numeric(df[c], errors="coerce") for c in FEATURES})
    for extra in (PREDICTION, TARGET, "ride_id"):
        if extra in df.columns:
            out[extra] = df[extra]
    pickup = next((c for c in ("lpep_pickup_datetime", "tpep_pickup_datetime") if c in df.columns), None)
    dropoff = next((c for c in ("lpep_dropoff_datetime", "tpep_dropoff_datetime") if c in df.columns), None)
    keep = (
        out["PULocationID"].between(ZONE_MIN, ZONE_MAX)
        & out["DOLocationID"].between(ZONE_MIN, ZONE_MAX)
        & out["trip_distance"].between(0, MAX_TRIP_DISTANCE)
    )
    if pickup and dropoff and TARGET not in out:
        out[TARGET] = (pd.to_datetime(df[dropoff]) - pd.to_datetime(df[pickup])).dt.total_seconds() / 60
        keep &= out[TARGET].between(1, 60)
    out = out[keep].reset_index(drop=True)
    return out.astype({"PULocationID": "int64", "DOLocationID": "int64", "trip_distance": "float64"})


MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))?/?$")


def load_reference(src: str, tracking_uri: str | None, logged_version: str | None) -> Reference:
    match = MODEL_URI.match(src)
    if not match:
        return Reference(clean_rides(read_table(src), src), src)

    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient()
    name, alias, version = match["name"], match["alias"], match["version"] or logged_version
    try:
        if alias:
            mv = client.get_model_version_by_alias(name, alias)
        elif version:
            mv = client.get_model_version(name, version)
        else:
            raise InputError(f"{src}: name a version or alias, or give prediction logs that carry model_version")
        rmse = client.get_run(mv.run_id).data.metrics.get("rmse")
        local = mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="reference/reference.parquet")
    except MlflowException as e:
        raise InputError(f"{src}: {e.message.splitlines()[0]}") from None
    except OSError as e:
        raise InputError(f"{src}: cannot download the reference artifact: {e}") from None
    frame = clean_rides(pd.read_parquet(local), src)
    return Reference(frame, f"{src} (version {mv.version}, run {mv.run_id})", str(mv.version), rmse)


def _in_window(key: str, since: datetime, until: datetime) -> bool:
    m = PARTITION.search(key)
    if not m:
        return True  # not partitioned: decide by the records' ts
    hour = datetime.fromisoformat(f"{m[1]}T{m[2]}:00:00+00:00")
    return since - timedelta(hours=1) < hour < until


def _read_log_object(uri: str) -> pa.Table:
    raw = storage.read_bytes(uri)
    if uri.endswith(".gz"):
        raw = gzip.decompress(raw)
    table = pa_json.read_json(
        io.BytesIO(raw),
        read_options=pa_json.ReadOptions(use_threads=False, block_size=max(1 << 20, len(raw) + 1)),
        parse_options=pa_json.ParseOptions(explicit_schema=LOG_SCHEMA, unexpected_field_behavior="ignore"),
    )
    # An explicit schema yields every column, in order: absent fields arrive as nulls.
    missing = [c for c in REQUIRED_LOG_FIELDS if table[c].null_count == len(table)]
    if missing:
        raise ValueError(f"missing fields {missing}")
    return table


def load_logs(
    prefix: str, since: datetime, until: datetime, model_version: str | None = None, threads: int = 16
) -> Current:
    try:
        keys = [k for k in storage.list_prefix(prefix) if k.endswith((".jsonl", ".jsonl.gz"))]
    except FileNotFoundError as e:
        raise InputError(str(e)) from None
    except Exception as e:
        raise InputError(f"{prefix}: cannot list prediction logs: {e}") from None
    keys = [k for k in keys if _in_window(k, since, until)]

    tables, unreadable = [], []

    def fetch(key):
        try:
            return key, _read_log_object(key), None
        except Exception as e:  # a corrupt object must not stop the job
            return key, None, e

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for key, table, error in pool.map(fetch, keys):
            if error is not None:
                unreadable.append(f"{key}: {str(error).splitlines()[0][:200]}")
            elif table.num_rows:
                tables.append(table)

    if not tables:
        frame = pd.DataFrame(columns=LOG_SCHEMA.names)
    else:
        frame = pa.concat_tables(tables).to_pandas()
    ts = pd.to_datetime(frame["ts"], utc=True, format="ISO8601", errors="coerce")
    in_window = (ts >= pd.Timestamp(since)) & (ts < pd.Timestamp(until))
    frame, ts = frame[in_window], ts[in_window]
    frame = frame.dropna(subset=REQUIRED_LOG_FIELDS)
    before = len(frame)
    frame = frame.drop_duplicates("record_id")
    duplicates = before - len(frame)

    versions = frame["model_version"].value_counts()
    if model_version is None and len(versions):
        latest = frame.loc[ts[frame.index].idxmax(), "model_version"]
        model_version = str(latest)
    others = {str(v): int(n) for v, n in versions.items() if str(v) != model_version}
    if model_version is not None:
        frame = frame[frame["model_version"] == model_version]
    frame = clean_rides(frame.reset_index(drop=True), prefix)
    return Current(frame, prefix, model_version, len(keys), unreadable, duplicates, others)


def load_current(src: str, since: datetime, until: datetime, model_version: str | None) -> Current:
    if src.lower().endswith((".parquet", ".csv", ".csv.gz")):
        return Current(clean_rides(read_table(src), src), src)
    return load_logs(src, since, until, model_version)


def load_actuals(src: str) -> pd.DataFrame:
    df = read_table(src)
    if "ride_id" not in df.columns:
        raise InputError(f"{src}: actuals need a ride_id column (and duration, or TLC pick-up/drop-off times)")
    if TARGET not in df.columns:
        df = clean_rides(df, src)
    out = df[["ride_id", TARGET]].dropna()
    out["ride_id"] = out["ride_id"].astype(str)
    return out.drop_duplicates("ride_id")


def performance(current: pd.DataFrame, actuals: pd.DataFrame) -> dict:
    joined = current.assign(ride_id=current["ride_id"].astype(str)).merge(actuals, on="ride_id", how="inner")
    if joined.empty:
        return {"n_joined": 0}
    error = joined[PREDICTION] - joined[TARGET]
    return {
        "n_joined": int(len(joined)),
        "rmse": float(np.sqrt(np.mean(error**2))),
        "mae": float(np.mean(np.abs(error))),
    }
