"""TLC's monthly green-taxi files: `2022-01` names one."""

from __future__ import annotations

import re
from pathlib import Path

TLC_URL = "https://d37ci6vzurychx.cloudfront.net/trip-data/green_tripdata_{month}.parquet"
CACHE_DIR = str(Path.home() / ".cache" / "taxi-mlops")  # where downloads are kept (DATA_CACHE_DIR overrides)
MONTH = re.compile(r"^\d{4}-\d{2}$")


def resolve_month(src: str, data_dir: str | None = None) -> str:
    """A month `YYYY-MM` → `<data_dir>/green_tripdata_YYYY-MM.parquet` when that file exists, else TLC's URL.

    Anything else (a path, an http(s) URL, an s3:// URI) is returned as it is.
    """
    if not MONTH.match(src):
        return src
    if data_dir:
        local = Path(data_dir) / f"green_tripdata_{src}.parquet"
        if local.exists():
            return str(local)
    return TLC_URL.format(month=src)


def serving_month(month: str, data_dir: str | Path):
    """A month's rides in `data_dir` as a dispatcher would send them (`serving_population`); FileNotFoundError when
    the file is not there."""
    import pandas as pd

    from ride.rules import serving_population

    path = Path(data_dir) / f"green_tripdata_{month}.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: set DATA_DIR to a folder of TLC's green_tripdata_YYYY-MM.parquet files")
    return serving_population(pd.read_parquet(path), path.name)


def download(url: str, cache_dir: str = CACHE_DIR) -> Path:
    """The URL's copy in `cache_dir`, fetched the first time (pooch, from the caller's environment; progress on a
    terminal)."""
    import sys

    import pooch

    return Path(pooch.retrieve(url, known_hash=None, path=cache_dir, progressbar=sys.stderr.isatty()))
