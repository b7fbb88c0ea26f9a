"""The prediction log: one JSON record per ride, shipped off the request path, never silently lost.

Records go to a bounded in-memory buffer. A background thread writes them as gzipped JSONL objects
under `<uri>/model=<name>/date=YYYY-MM-DD/hour=HH/<uuid>.jsonl.gz` every `flush_records` records or
`flush_seconds` seconds. A batch that cannot be written (S3 down) is spilled to a local directory and
shipped when the destination answers again, with exponential backoff between attempts. Records are
dropped — and counted — only when both the memory buffer and the spill directory are full.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Protocol

from prometheus_client import Counter, Gauge

log = logging.getLogger("transformer.logsink")

WRITTEN = Counter("prediction_log_records_written", "Prediction log records written to the destination")
FAILURES = Counter("prediction_log_flush_failures", "Failed attempts to write a batch of prediction logs")
DROPPED = Counter("prediction_log_records_dropped", "Prediction log records dropped: memory and spill full")
BUFFERED = Gauge("prediction_log_records_buffered", "Prediction log records waiting in memory")
SPILLED = Gauge("prediction_log_records_spilled", "Prediction log records waiting in the local spill directory")


class Destination(Protocol):
    def put(self, key: str, body: bytes) -> None: ...


class S3Destination:
    def __init__(self, uri: str):
        import boto3
        from botocore.config import Config

        self.bucket, _, self.prefix = uri.removeprefix("s3://").partition("/")
        # Our own loop retries with backoff and spills; botocore's retries would only hold the batch longer.
        config = Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=2, read_timeout=10)
        self.client = boto3.client("s3", config=config)

    def put(self, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=f"{self.prefix.strip('/')}/{key}".lstrip("/"), Body=body)


class LocalDestination:
    def __init__(self, root: str):
        self.root = Path(root.removeprefix("file://"))

    def put(self, key: str, body: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(body)
        tmp.replace(path)  # readers never see half an object


def destination_for(uri: str) -> Destination:
    return S3Destination(uri) if uri.startswith("s3://") else LocalDestination(uri)


def object_key(model_name: str, ts: str) -> str:
    """Partition by the first record's UTC hour; names are uuids, so no ride_id can shape a key."""
    return f"model={model_name}/date={ts[:10]}/hour={ts[11:13]}/{uuid.uuid4().hex}.jsonl.gz"


def encode(records: list[dict]) -> bytes:
    lines = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
    return gzip.compress(lines.encode(), compresslevel=5)


class PredictionLog:
    def __init__(
        self,
        destination: Destination,
        model_name: str,
        spill_dir: str,
        flush_records: int = 500,
        flush_seconds: float = 2.0,
        max_buffered: int = 50_000,
        max_spill_bytes: int = 512 * 1024 * 1024,
        max_backoff: float = 30.0,
    ):
        self.destination = destination
        self.model_name = model_name
        self.spill_dir = Path(spill_dir)
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        self.flush_records = flush_records
        self.flush_seconds = flush_seconds
        self.max_buffered = max_buffered
        self.max_spill_bytes = max_spill_bytes
        self.max_backoff = max_backoff

        self._buffer: deque[dict] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._io = threading.Lock()  # one writer at a time: the flusher or close()
        self._backoff = 0.0
        self._retry_at = 0.0
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        SPILLED.set(self._spilled_records())

    def start(self) -> "PredictionLog":
        self._thread.start()
        return self

    # -- request path -------------------------------------------------------------------------------
    def add(self, records: list[dict]) -> None:
        with self._lock:
            if len(self._buffer) + len(records) > self.max_buffered:
                overflow = list(self._buffer)
                self._buffer.clear()
            else:
                overflow = None
            self._buffer.extend(records)
            size = len(self._buffer)
        if overflow:
            # Memory is full (the destination has been down a while): move it to disk, or count the loss.
            self._spill(overflow)
        BUFFERED.set(size)
        if size >= self.flush_records:
            self._wake.set()

    # -- background ---------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            if self._stop.is_set():
                break
            if time.monotonic() >= self._retry_at:
                self.flush()

    def _take(self) -> list[dict]:
        with self._lock:
            batch = list(self._buffer)
            self._buffer.clear()
        BUFFERED.set(0)
        return batch

    def flush(self) -> bool:
        """Ship spilled batches, then the buffer. True when everything reached the destination."""
        with self._io:
            if not self._ship_spill():
                self._spill(self._take())
                return False
            left = self._write(self._take())
            self._spill(left)
            return not left

    def _write(self, batch: list[dict]) -> list[dict]:
        """Write one object per UTC hour; return the records not written (empty when all were)."""
        groups: dict[str, list[dict]] = {}
        for record in batch:
            groups.setdefault(record["ts"][:13], []).append(record)
        pending = list(groups.values())
        while pending:
            records = pending[0]
            try:
                self.destination.put(object_key(self.model_name, records[0]["ts"]), encode(records))
            except Exception as e:
                self._failed(e)
                return [r for group in pending for r in group]
            WRITTEN.inc(len(records))
            pending.pop(0)
        self._backoff = 0.0
        self._retry_at = 0.0
        return []

    def _failed(self, error: Exception) -> None:
        FAILURES.inc()
        self._backoff = min(self.max_backoff, max(0.5, self._backoff * 2))
        self._retry_at = time.monotonic() + self._backoff
        log.warning("prediction log write failed (retrying in %.1fs): %s", self._backoff, error)

    # -- spill directory ----------------------------------------------------------------------------
    def _spill_files(self) -> list[Path]:
        return sorted(self.spill_dir.glob("*.jsonl.gz"))

    def _spilled_records(self) -> int:
        return sum(int(p.name.split("-")[1]) for p in self._spill_files())

    def _spill(self, batch: list[dict]) -> None:
        if not batch:
            return
        body = encode(batch)
        used = sum(p.stat().st_size for p in self._spill_files())
        if used + len(body) > self.max_spill_bytes:
            DROPPED.inc(len(batch))
            log.error("prediction log: memory and spill directory full, dropped %d records", len(batch))
            return
        name = f"{time.time_ns()}-{len(batch)}-{uuid.uuid4().hex[:8]}.jsonl.gz"
        tmp = self.spill_dir / f".{name}.tmp"
        tmp.write_bytes(body)
        tmp.replace(self.spill_dir / name)
        SPILLED.inc(len(batch))

    def _ship_spill(self) -> bool:
        for path in self._spill_files():
            count = int(path.name.split("-")[1])
            records = [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines() if line]
            left = self._write(records)
            if left and len(left) == count:
                return False
            path.unlink()
            SPILLED.dec(count)
            if left:  # part of it was written: keep only the rest
                self._spill(left)
                return False
        return True

    # -- shutdown -----------------------------------------------------------------------------------
    def close(self, timeout: float = 20.0) -> None:
        """Flush everything (retrying for up to `timeout` s); what still cannot be written stays spilled."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        deadline = time.monotonic() + timeout
        while not self.flush() and time.monotonic() < deadline:
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        left = self._spilled_records()
        if left:
            log.warning("prediction log: %d records left in %s, shipped at next start", left, self.spill_dir)
