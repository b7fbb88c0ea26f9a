"""Reading the prediction log and the actuals back: partitioned JSON-lines objects into one table.

Delivery is at-least-once and objects can be damaged: an object that cannot be read is skipped and counted,
never fatal; duplicates are the caller's to drop (by `record_id` for predictions, by `ride_id` for actuals).
Uses pyarrow and pandas from the caller's environment.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ride import store
from ride.records import ACTUAL_FIELDS, LOG_FIELDS, PARTITION
from ride.rules import FEATURES, PREDICTION, RIDE_ID, TARGET


@dataclass
class Records:
    frame: "object"  # a pandas DataFrame with every field of the record, in order
    objects: int = 0  # objects read (in the window)
    unreadable: list[str] = field(default_factory=list)  # "<uri>: <why>", one per object skipped
    duplicates: int = 0  # records dropped as copies of one already read


def _schema(fields: dict):
    import pyarrow as pa

    types = {str: pa.string(), int: pa.int64(), float: pa.float64()}
    return pa.schema([(name, types[kind]) for name, kind in fields.items()])


def _partition_in(uri: str, since: datetime | None, until: datetime | None) -> bool:
    m = PARTITION.search(uri)
    if not m or (since is None and until is None):
        return True  # not partitioned: the records decide
    hour = datetime.fromisoformat(f"{m['date']}T{m['hour']}:00:00+00:00")
    return (since is None or hour > since - timedelta(hours=1)) and (until is None or hour < until)


def _table(uri: str, body: bytes, schema, required: list[str]):
    import pyarrow.json as pa_json

    if uri.endswith(".gz"):
        body = gzip.decompress(body)
    table = pa_json.read_json(
        io.BytesIO(body),
        read_options=pa_json.ReadOptions(use_threads=False, block_size=max(1 << 20, len(body) + 1)),
        parse_options=pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
    )
    # An explicit schema yields every column, in order: absent fields arrive as nulls.
    missing = [c for c in required if table[c].null_count == len(table)]
    if missing:
        raise ValueError(f"missing fields {missing}")
    return table


def read_records(prefix: str, fields: dict, required: list[str], since: datetime | None = None,
                 until: datetime | None = None, credentials: dict | None = None) -> Records:  # fmt: skip
    """Every record below `prefix` in objects whose hour partition can hold records of [since, until)."""
    import pandas as pd
    import pyarrow as pa

    schema = _schema(fields)
    uris = [u for u in store.list_objects(prefix, credentials) if u.endswith((".jsonl", ".jsonl.gz"))]
    uris = [u for u in uris if _partition_in(u, since, until)]
    tables, unreadable = [], []
    for uri, body in store.read_many(uris, credentials).items():
        try:
            if isinstance(body, Exception):
                raise body
            table = _table(uri, body, schema, required)
        except Exception as e:  # one damaged object must not hide the others
            unreadable.append(f"{uri}: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}")
            continue
        if table.num_rows:
            tables.append(table)
    frame = pa.concat_tables(tables).to_pandas() if tables else pd.DataFrame({n: [] for n in schema.names})
    frame = frame.dropna(subset=required).reset_index(drop=True)
    return Records(frame, len(uris), unreadable)


def read_predictions(prefix: str, since: datetime | None = None, until: datetime | None = None,
                     credentials: dict | None = None) -> Records:  # fmt: skip
    """Prediction-log records scored in [since, until), deduplicated by record_id; `ts` as UTC timestamps."""
    import pandas as pd

    required = ["record_id", "ts", "model_version", *FEATURES, PREDICTION]
    records = read_records(prefix, LOG_FIELDS, required, since, until, credentials)
    frame = records.frame
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True, format="ISO8601", errors="coerce")
    keep = frame["ts"].notna()
    if since is not None:
        keep &= frame["ts"] >= pd.Timestamp(since)
    if until is not None:
        keep &= frame["ts"] < pd.Timestamp(until)
    frame = frame[keep]
    records.frame = frame.drop_duplicates("record_id").reset_index(drop=True)
    records.duplicates = len(frame) - len(records.frame)
    return records


def read_actuals(prefix: str, since: datetime | None = None) -> Records:
    """Actuals that arrived since `since` (late ones included), one per ride_id: the last to arrive."""
    records = read_records(prefix, ACTUAL_FIELDS, [RIDE_ID, TARGET], since, None)
    frame = records.frame  # objects in key order, which is the order they arrived in
    records.frame = frame.drop_duplicates(RIDE_ID, keep="last").reset_index(drop=True)
    records.duplicates = len(frame) - len(records.frame)
    return records
