"""Loading a month of TLC trips from a path, an http(s) URL or s3://, and turning it into features."""

from __future__ import annotations

import hashlib
import io
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from training.features import (
    FEATURES,
    MAX_DURATION,
    MAX_TRIP_DISTANCE,
    MIN_DURATION,
    TARGET,
    ZONE_MAX,
    ZONE_MIN,
)

TLC_URL = "https://d37ci6vzurychx.cloudfront.net/trip-data/green_tripdata_{month}.parquet"
MONTH = re.compile(r"^\d{4}-\d{2}$")
PICKUP_COLUMNS = ("lpep_pickup_datetime", "tpep_pickup_datetime")
DROPOFF_COLUMNS = ("lpep_dropoff_datetime", "tpep_dropoff_datetime")


class DataError(Exception):
    """A data source the user named cannot be used; the message says which and why."""


@dataclass
class Month:
    source: str
    sha256: str
    rows: int  # as read
    frame: pd.DataFrame  # features + target, filtered

    @property
    def rows_used(self) -> int:
        return len(self.frame)


def cache_dir() -> Path:
    return Path(os.environ.get("DATA_CACHE_DIR", Path.home() / ".cache" / "taxi-mlops"))


def resolve_source(src: str) -> str:
    """`2022-01` names a green-taxi month: the copy in DATA_DIR when there is one, else TLC's URL."""
    if not MONTH.match(src):
        return src
    data_dir = os.environ.get("DATA_DIR")
    if data_dir:
        local = Path(data_dir) / f"green_tripdata_{src}.parquet"
        if local.exists():
            return str(local)
    return TLC_URL.format(month=src)


def fetch_bytes(src: str) -> bytes:
    if src.startswith(("http://", "https://")):
        import pooch

        try:
            path = pooch.retrieve(
                src, known_hash=None, path=cache_dir(), progressbar=sys.stderr.isatty()
            )
        except Exception as e:  # requests raises many kinds; all mean "could not download"
            hint = " (offline? point DATA_DIR at local green_tripdata_YYYY-MM.parquet files)" if src.startswith(TLC_URL.split("{")[0]) else ""
            raise DataError(f"{src}: download failed{hint}: {str(e)[:200]}") from None
        return Path(path).read_bytes()
    if src.startswith("s3://"):
        import fsspec

        try:
            with fsspec.open(src, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise DataError(f"{src}: no such object") from None
        except Exception as e:
            raise DataError(f"{src}: cannot read from S3: {e}") from None
    path = Path(src.removeprefix("file://"))
    if not path.is_file():
        raise DataError(f"{src}: file not found")
    return path.read_bytes()


def parse(src: str, raw: bytes) -> pd.DataFrame:
    name = src.split("?")[0].lower()
    try:
        if name.endswith(".parquet"):
            return pd.read_parquet(io.BytesIO(raw))
        if name.endswith((".csv", ".csv.gz")):
            return pd.read_csv(io.BytesIO(raw), compression="gzip" if name.endswith(".gz") else None)
    except Exception as e:
        raise DataError(f"{src}: cannot parse: {e}") from None
    raise DataError(f"{src}: unknown format (expected .parquet, .csv or .csv.gz)")


def _first_present(df: pd.DataFrame, candidates: tuple[str, ...]) -> str | None:
    return next((c for c in candidates if c in df.columns), None)


def prepare(df: pd.DataFrame, src: str = "data") -> pd.DataFrame:
    """Features and the duration target (minutes), keeping only rows the model can learn from."""
    pickup, dropoff = _first_present(df, PICKUP_COLUMNS), _first_present(df, DROPOFF_COLUMNS)
    missing = [c for c in FEATURES if c not in df.columns]
    if pickup is None:
        missing.append("lpep_pickup_datetime")
    if dropoff is None:
        missing.append("lpep_dropoff_datetime")
    if missing:
        raise DataError(f"{src}: missing columns {', '.join(missing)}")

    out = pd.DataFrame(
        {
            "PULocationID": pd.to_numeric(df["PULocationID"], errors="coerce"),
            "DOLocationID": pd.to_numeric(df["DOLocationID"], errors="coerce"),
            "trip_distance": pd.to_numeric(df["trip_distance"], errors="coerce"),
        }
    )
    start = pd.to_datetime(df[pickup], errors="coerce")
    end = pd.to_datetime(df[dropoff], errors="coerce")
    out[TARGET] = (end - start).dt.total_seconds() / 60

    keep = (
        out[TARGET].between(MIN_DURATION, MAX_DURATION)
        & out["PULocationID"].between(ZONE_MIN, ZONE_MAX)
        & out["DOLocationID"].between(ZONE_MIN, ZONE_MAX)
        & (out["PULocationID"] % 1 == 0)
        & (out["DOLocationID"] % 1 == 0)
        & out["trip_distance"].between(0, MAX_TRIP_DISTANCE)
        & np.isfinite(out["trip_distance"])
    )
    out = out[keep].reset_index(drop=True)
    if out.empty:
        raise DataError(
            f"{src}: no usable rides after filtering ({len(df)} rows read; need duration "
            f"{MIN_DURATION:g}-{MAX_DURATION:g} min, zones {ZONE_MIN}-{ZONE_MAX}, distance 0-{MAX_TRIP_DISTANCE:g})"
        )
    out = out.astype({"PULocationID": "int64", "DOLocationID": "int64", "trip_distance": "float64"})
    return out


def load_month(src: str) -> Month:
    resolved = resolve_source(src)
    raw = fetch_bytes(resolved)
    df = parse(resolved, raw)
    return Month(
        source=resolved,
        sha256=hashlib.sha256(raw).hexdigest(),
        rows=len(df),
        frame=prepare(df, resolved),
    )
