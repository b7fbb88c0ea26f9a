"""What the drift job compares: the rides served in a window (prediction logs, or a table of rides) and the
reference of the model version that served them."""

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

import ride
from monitoring import storage
from ride import PREDICTION, RIDE_ID, TARGET

ARROW_TYPES = {str: pa.string(), int: pa.int64(), float: pa.float64()}
LOG_SCHEMA = pa.schema([(name, ARROW_TYPES[kind]) for name, kind in ride.LOG_FIELDS.items()])
REQUIRED_LOG_FIELDS = ["record_id", "ts", "model_version", *ride.FEATURES, PREDICTION]
MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))?/?$")
REFERENCE_ARTIFACT = "reference/reference.parquet"


class InputError(Exception):
    """An input the user named cannot be used; the message says which and why."""


@dataclass
class Reference:
    frame: pd.DataFrame  # the serving population: features [+ prediction] [+ duration] [+ pickup_datetime]
    source: str
    model_version: str | None = None
    validation_rmse: float | None = None


@dataclass
class Current:
    frame: pd.DataFrame  # served rides: features [+ prediction, model_version, ride_id]
    source: str
    objects: int = 0
    unreadable: list[str] = field(default_factory=list)
    duplicates: int = 0

    def versions(self) -> list[str | None]:
        """Model versions in the window, the newest (last scored) first; [None] for a table of rides."""
        if "model_version" not in self.frame.columns:
            return [None]
        last = self.frame.groupby("model_version")["ts"].max().sort_values(ascending=False)
        return [str(v) for v in last.index]

    def of_version(self, version: str | None) -> pd.DataFrame:
        if version is None:
            return self.frame
        return self.frame[self.frame["model_version"] == version].reset_index(drop=True)


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


def serving_rides(table: pd.DataFrame, src: str, keep: tuple[str, ...] = ()) -> pd.DataFrame:
    """The rides of a table the transformer would score (a TLC month is treated like any other table)."""
    try:
        return ride.serving_population(table, src, keep)
    except ride.SourceError as e:
        raise InputError(str(e)) from None


class ReferenceResolver:
    """`--reference`: a table of rides (one reference for every version), or a model in the registry (each logged
    version judged against its own reference: the validation rides it was trained with)."""

    def __init__(self, src: str, tracking_uri: str | None):
        self.src = src
        self.tracking_uri = tracking_uri
        self.model = MODEL_URI.match(src)
        self._cache: dict[str | None, Reference] = {}

    @property
    def pinned_version(self) -> str | None:
        """The one version an alias or version URI names (its logs are judged, others are left out)."""
        if not self.model or not (self.model["alias"] or self.model["version"]):
            return None
        if self.model["version"]:
            return self.model["version"]
        client = self._client()
        try:
            return str(client.get_model_version_by_alias(self.model["name"], self.model["alias"]).version)
        except Exception as e:
            raise InputError(f"{self.src}: {_first_line(e)}") from None

    def for_version(self, version: str | None) -> Reference:
        if version not in self._cache:
            self._cache[version] = self._load(version)
        return self._cache[version]

    def _client(self):
        import mlflow
        from mlflow import MlflowClient

        if self.tracking_uri:
            mlflow.set_tracking_uri(self.tracking_uri)
        return MlflowClient()

    def _load(self, version: str | None) -> Reference:
        if not self.model:
            return Reference(serving_rides(read_table(self.src), self.src), self.src)
        import mlflow
        from mlflow.exceptions import MlflowException

        name = self.model["name"]
        version = self.model["version"] or version or self.pinned_version
        if version is None:
            raise InputError(f"{self.src}: name a version or alias, or give prediction logs that carry model_version")
        client = self._client()
        try:
            mv = client.get_model_version(name, version)
            rmse = client.get_run(mv.run_id).data.metrics.get("rmse")
            local = mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=REFERENCE_ARTIFACT)
        except MlflowException as e:
            raise InputError(f"{self.src} (version {version}): {_first_line(e)}") from None
        except OSError as e:
            raise InputError(f"{self.src} (version {version}): cannot download the reference artifact: {e}") from None
        frame = serving_rides(pd.read_parquet(local), f"{self.src} version {version}")
        return Reference(frame, f"models:/{name}/{mv.version} (run {mv.run_id})", str(mv.version), rmse)


def _first_line(e: Exception) -> str:
    return (getattr(e, "message", None) or str(e)).splitlines()[0]


def _in_window(key: str, since: datetime, until: datetime) -> bool:
    m = ride.LOG_KEY.search(key)
    if not m:
        return True  # not partitioned: decide by the records' ts
    hour = datetime.fromisoformat(f"{m['date']}T{m['hour']}:00:00+00:00")
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


def load_logs(prefix: str, since: datetime, until: datetime, threads: int = 16) -> Current:
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

    frame = pa.concat_tables(tables).to_pandas() if tables else pd.DataFrame(columns=LOG_SCHEMA.names)
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True, format="ISO8601", errors="coerce")
    frame = frame[(frame["ts"] >= pd.Timestamp(since)) & (frame["ts"] < pd.Timestamp(until))]
    frame = frame.dropna(subset=REQUIRED_LOG_FIELDS)
    before = len(frame)
    frame = frame.drop_duplicates("record_id")
    duplicates = before - len(frame)
    rides = serving_rides(frame.reset_index(drop=True), prefix, keep=("model_version", "ts"))
    return Current(rides, prefix, len(keys), unreadable, duplicates)


def load_current(src: str, since: datetime, until: datetime) -> Current:
    if src.lower().endswith((".parquet", ".csv", ".csv.gz")):
        return Current(serving_rides(read_table(src), src), src)
    return load_logs(src, since, until)


def load_actuals(src: str) -> pd.DataFrame:
    table = read_table(src)
    if RIDE_ID not in table.columns:
        raise InputError(f"{src}: actuals need a ride_id column (and duration, or TLC pick-up/drop-off times)")
    if TARGET not in table.columns:
        table = serving_rides(table, src)
        if TARGET not in table.columns:
            raise InputError(f"{src}: actuals need a duration column, or TLC pick-up and drop-off times")
    out = table[[RIDE_ID, TARGET]].dropna()
    out[RIDE_ID] = out[RIDE_ID].astype(str)
    return out.drop_duplicates(RIDE_ID, keep="last")


def performance(current: pd.DataFrame, actuals: pd.DataFrame) -> dict:
    """Live error on the window's rides whose actual duration is known and within training's 1-60 minutes."""
    joined = current.assign(ride_id=current[RIDE_ID].astype(str)).merge(actuals, on=RIDE_ID, how="inner")
    learnable = ride.learnable(joined)
    out = {"n_with_actuals": int(len(joined)), "n_joined": int(len(learnable))}
    if learnable.empty:
        return out
    error = learnable[PREDICTION] - learnable[TARGET]
    return {**out, "rmse": float(np.sqrt(np.mean(error**2))), "mae": float(np.mean(np.abs(error)))}
