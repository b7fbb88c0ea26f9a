"""The prediction log: one JSON record per ride, shipped off the request path, never silently lost.

`add()` appends to memory and wakes the flusher thread; every other step happens in that thread. Every
`flush_records` records or `flush_seconds` seconds it writes what waits as gzipped JSONL objects, one per UTC
hour, under `<uri>/model=<name>/date=YYYY-MM-DD/hour=HH/<uuid>.jsonl.gz`.

While the destination fails, each flush moves what waits in memory to the spill directory (local, so it
outlives a crash or a container restart), and spill files are shipped as they are, oldest first, with
exponential backoff between attempts. When the spill directory is full or cannot be written, records wait in
memory, up to `max_buffered`; past both limits the oldest are dropped, and counted. A spill file that cannot
be read is moved to `<spill_dir>/quarantine/`, and counted. Any failure is logged and counted, and the
thread goes on. Delivery is at least once: deduplicate by `record_id`.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import threading
import time
import uuid
import zlib
from collections import deque
from pathlib import Path
from typing import Protocol

from prometheus_client import Counter, Gauge

from ride import jsonl_gz, log_key, startup

log = logging.getLogger("transformer.logsink")

WRITTEN = Counter("prediction_log_records_written", "Prediction log records written to the destination")
FAILURES = Counter(
    "prediction_log_flush_failures",
    "Failures in the prediction-log flusher: destination writes, spill-directory I/O, unexpected errors",
)
DROPPED = Counter("prediction_log_records_dropped", "Prediction log records dropped: memory and spill full")
QUARANTINED = Counter(
    "prediction_log_spill_files_quarantined", "Unreadable spill files moved aside to <spill_dir>/quarantine"
)
BUFFERED = Gauge("prediction_log_records_buffered", "Prediction log records waiting in memory")
SPILLED = Gauge("prediction_log_records_spilled", "Prediction log records waiting in the local spill directory")

# One S3 put is bounded (no retries inside botocore: our loop retries with backoff), so a shutdown deadline holds:
# connecting, botocore's own 1 s wait for a "100 Continue", then each socket read or write.
S3_CONNECT_TIMEOUT = 2.0
S3_READ_TIMEOUT = 5.0
PUT_TIMEOUT = S3_CONNECT_TIMEOUT + 1.0 + S3_READ_TIMEOUT

# <zero-padded time_ns>-<records>-<UTC hour>-<random>.jsonl.gz: names sort by age, carry the count and the hour.
SPILL_NAME = re.compile(r"(?P<ns>\d{20})-(?P<count>\d+)-(?P<hour>\d{4}-\d{2}-\d{2}T\d{2})-[0-9a-f]{8}\.jsonl\.gz")


class Destination(Protocol):
    def put(self, key: str, body: bytes) -> None: ...


class S3Destination:
    def __init__(self, uri: str):
        import boto3
        from botocore.config import Config

        self.bucket, _, self.prefix = uri.removeprefix("s3://").partition("/")
        config = Config(
            retries={"total_max_attempts": 1},
            connect_timeout=S3_CONNECT_TIMEOUT,
            read_timeout=S3_READ_TIMEOUT,
        )
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


def _encodable(record: dict) -> bool:
    try:
        json.dumps(record)
    except (TypeError, ValueError):
        return False
    return True


def by_hour(records: list[dict]) -> list[list[dict]]:
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(record["ts"][:13], []).append(record)
    return list(groups.values())


class PredictionLog:
    def __init__(
        self,
        destination: Destination,
        model_name: str,
        spill_dir: str,
        flush_records: int = 5000,
        flush_seconds: float = 2.0,
        max_buffered: int = 50_000,
        max_spill_bytes: int = 512 * 1024 * 1024,
        max_backoff: float = 30.0,
    ):
        self.destination = destination
        self.model_name = model_name
        self.spill_dir = Path(spill_dir)
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        self.quarantine_dir = self.spill_dir / "quarantine"
        self.flush_records = flush_records
        self.flush_seconds = flush_seconds
        self.max_buffered = max_buffered
        self.max_spill_bytes = max_spill_bytes
        self.max_backoff = max_backoff

        self._buffer: deque[dict] = deque()
        self._buffer_lock = threading.Lock()  # add() runs on the event loop, the rest in the flusher
        self._flush_lock = threading.Lock()  # one flush at a time: the flusher thread or close()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._backoff = 0.0
        self._retry_at = 0.0  # destination failing: no write before this (monotonic)
        self._spill_retry_at = 0.0  # spill directory full or failing: no new file before this
        self._unmovable: set[str] = set()  # unreadable files that could not be moved aside either
        self._spill_index: dict[str, tuple[int, int]] = {}  # spill file name -> (records, bytes)
        self._spilled = self._spilled_bytes = 0
        self._scan()
        self._wake_at = flush_records  # add() wakes the flusher at this many records in memory
        self._closed = False
        self._undelivered = 0
        BUFFERED.set_function(lambda: len(self._buffer))
        SPILLED.set_function(self.spilled_records)
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)

    @classmethod
    def open(cls, model_name: str, settings) -> "PredictionLog":
        """The prediction log the transformer's settings describe, its flusher running; a spill directory that
        cannot be made is one line and exit 2."""
        try:
            return cls(destination_for(settings.prediction_log_uri), model_name, settings.prediction_log_spill_dir,
                       flush_records=settings.prediction_log_flush_records,
                       flush_seconds=settings.prediction_log_flush_seconds,
                       max_buffered=settings.prediction_log_max_buffered,
                       max_spill_bytes=settings.prediction_log_max_spill_mb * 1024 * 1024).start()  # fmt: skip
        except OSError as e:
            startup.fail(f"PREDICTION_LOG_SPILL_DIR={settings.prediction_log_spill_dir}: {e.strerror or e}; point it "
                         "(or --prediction_log_spill_dir) at a writable directory")  # fmt: skip

    def start(self) -> "PredictionLog":
        self._thread.start()
        return self

    # -- request path: no I/O ---------------------------------------------------------------------------
    def add(self, records: list[dict]) -> None:
        with self._buffer_lock:
            self._buffer.extend(records)
            size = len(self._buffer)
        if size >= self._wake_at:
            self._wake.set()

    # -- the flusher thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._closing.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            if self._closing.is_set():
                break
            self.flush(force=False)
        self._shutdown()

    def flush(self, force: bool = True) -> bool:
        """One pass: ship spill files then memory, or park memory in the spill directory while the destination
        fails. `force` ignores the backoff. True when nothing is left waiting. Never raises."""
        with self._flush_lock:
            try:
                if force or time.monotonic() >= self._retry_at:
                    if self._ship_spill():
                        self._putback(self._write(self._take()))
                if time.monotonic() < self._retry_at:
                    self._park()
            except Exception as e:  # a bug here must not end logging: count it, keep the records, go on
                self._failure("flush", e, exc_info=True)
            now = time.monotonic()
            # Nowhere to move records (destination and spill directory both failing): wake only to drop the excess.
            stuck = now < self._retry_at and now < self._spill_retry_at
            self._wake_at = self.max_buffered + 1 if stuck else self.flush_records
            return not self._buffer and not self.spilled_records()

    def _take(self, n: int | None = None) -> list[dict]:
        with self._buffer_lock:
            if n is None or n >= len(self._buffer):
                batch = list(self._buffer)
                self._buffer.clear()
            else:
                batch = [self._buffer.popleft() for _ in range(n)]
        return batch

    def _putback(self, records: list[dict]) -> None:
        """Return records to the front of memory, where the oldest wait."""
        if records:
            with self._buffer_lock:
                self._buffer.extendleft(reversed(records))

    def _write(self, batch: list[dict], deadline: float | None = None) -> list[dict]:
        """Write one object per UTC hour; return the records not written (empty when all were)."""
        pending = by_hour(batch)
        try:
            while pending and not self._out_of_time(deadline):
                records = pending[0]
                body = self._encode(records)
                if body is not None:
                    try:
                        self.destination.put(log_key(self.model_name, records[0]["ts"]), body)
                    except Exception as e:
                        self._destination_failed(e)
                        break
                    WRITTEN.inc(len(records))
                    self._destination_ok()
                pending.pop(0)
        except Exception as e:  # whatever it was, the records not written are handed back
            self._failure("write", e, exc_info=True)
        return [r for group in pending for r in group]

    def _encode(self, records: list[dict]) -> bytes | None:
        """The group's bytes. A record JSON cannot encode is dropped, and counted, from the group in place (retried,
        it would block everything behind it); None when none is left."""
        try:
            return jsonl_gz(records)
        except (TypeError, ValueError) as e:
            FAILURES.inc()
            good = [r for r in records if _encodable(r)]
            self._drop(len(records) - len(good), f"not encodable as JSON: {e}")
            records[:] = good
            return jsonl_gz(good) if good else None

    def _out_of_time(self, deadline: float | None) -> bool:
        """Past the shutdown deadline; or, in an ordinary flush, closing (the shutdown takes over)."""
        return self._closing.is_set() if deadline is None else time.monotonic() >= deadline

    def _destination_ok(self) -> None:
        self._backoff = 0.0
        self._retry_at = 0.0

    def _destination_failed(self, error: Exception) -> None:
        self._backoff = min(self.max_backoff, max(0.5, self._backoff * 2))
        self._retry_at = time.monotonic() + self._backoff
        self._failure(f"write (retrying in {self._backoff:.1f}s)", error)

    def _failure(self, what: str, error: Exception, exc_info: bool = False) -> None:
        FAILURES.inc()
        log.warning("prediction log %s failed: %s: %s", what, type(error).__name__, error, exc_info=exc_info)

    def _park(self) -> None:
        """The destination is failing: move memory to the spill directory; past both limits drop the oldest."""
        if self._buffer and time.monotonic() >= self._spill_retry_at:
            left = self._spill(self._take(), make_room=False)
            if left:  # the spill directory is full or failing: memory holds them, and is tried again later
                self._spill_retry_at = time.monotonic() + self.flush_seconds
                self._putback(left)
        excess = len(self._buffer) - self.max_buffered
        if excess > 0:
            # Spill a chunk, not one record per add(): memory then has room for the next flush_records.
            lost = self._spill(self._take(excess + min(self.flush_records, self.max_buffered)), make_room=True)
            room = max(0, self.max_buffered - len(self._buffer))
            keep = lost[len(lost) - room :] if room else []
            self._putback(keep)
            if len(lost) > len(keep):
                self._drop(len(lost) - len(keep), "memory full and the spill directory cannot be written")

    def _drop(self, n: int, why: str) -> None:
        DROPPED.inc(n)
        log.error("prediction log: dropped %d records (%s)", n, why)

    # -- spill directory --------------------------------------------------------------------------------
    def spilled_records(self) -> int:
        return self._spilled

    def _scan(self) -> None:
        for path in self.spill_dir.iterdir():
            match = SPILL_NAME.fullmatch(path.name)
            if match:
                try:
                    self._indexed(path.name, int(match["count"]), path.stat().st_size)
                except OSError:
                    pass  # gone meanwhile

    def _indexed(self, name: str, count: int, size: int) -> None:
        self._spill_index[name] = (count, size)
        self._spilled += count
        self._spilled_bytes += size

    def _unindexed(self, name: str) -> int:
        count, size = self._spill_index.pop(name, (0, 0))
        self._spilled -= count
        self._spilled_bytes -= size
        return count

    def _spill(self, records: list[dict], make_room: bool) -> list[dict]:
        """Write records to the spill directory, a file per UTC hour; return those it could not take.

        With `make_room`, the oldest spill files are dropped (and counted) to fit them."""
        groups = by_hour(records)
        try:
            while groups:
                group = groups[0]
                if not make_room and self._spilled and (
                    self._spilled_bytes + len(group) * self._spilled_bytes / self._spilled > self.max_spill_bytes
                ):
                    break  # full, by the size records have had so far: spare the encoding
                body = self._encode(group)
                if body is None:
                    groups.pop(0)
                    continue
                while make_room and self._spill_index and self._spilled_bytes + len(body) > self.max_spill_bytes:
                    self._evict_oldest()
                if self._spilled_bytes + len(body) > self.max_spill_bytes:
                    log.warning("prediction log: spill directory full (%d bytes), %d records wait in memory",
                                self._spilled_bytes, len(self._buffer) + sum(map(len, groups)))  # fmt: skip
                    break
                name = f"{time.time_ns():020d}-{len(group)}-{group[0]['ts'][:13]}-{uuid.uuid4().hex[:8]}.jsonl.gz"
                tmp = self.spill_dir / f".{name}.tmp"
                try:
                    tmp.write_bytes(body)
                    tmp.replace(self.spill_dir / name)
                except OSError as e:
                    self._failure(f"spill to {self.spill_dir}", e)
                    try:
                        tmp.unlink(missing_ok=True)
                    except OSError:
                        pass
                    break
                self._indexed(name, len(group), len(body))
                groups.pop(0)
        except Exception as e:  # whatever it was, the records not spilled are handed back
            self._failure("spill", e, exc_info=True)
        return [r for group in groups for r in group]

    def _evict_oldest(self) -> None:
        name = min(self._spill_index)
        count = self._unindexed(name)
        try:
            (self.spill_dir / name).unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            self._failure(f"removing {name}", e)
        self._drop(count, f"memory and spill directory full: the oldest spill file {name} made room")

    def _ship_spill(self, deadline: float | None = None) -> bool:
        """Ship spill files, oldest first, each as one object. False when the destination failed or time ran out."""
        for path in self._spill_paths():
            if self._out_of_time(deadline):
                return False
            match = SPILL_NAME.fullmatch(path.name)
            if not match:
                self._quarantine(path, "not a spill file name")
                continue
            count = int(match["count"])
            try:
                body = path.read_bytes()
                lines = gzip.decompress(body).count(b"\n")
            except FileNotFoundError:
                self._unindexed(path.name)
                continue
            except (OSError, EOFError, zlib.error) as e:
                self._quarantine(path, f"unreadable: {type(e).__name__}: {e}")
                continue
            if lines != count:
                self._quarantine(path, f"{lines} records where its name says {count}")
                continue
            try:
                self.destination.put(log_key(self.model_name, match["hour"]), body)
            except Exception as e:
                self._destination_failed(e)
                return False
            WRITTEN.inc(count)
            self._destination_ok()
            self._unindexed(path.name)
            try:
                path.unlink()
            except OSError as e:  # it would be shipped again: a duplicate, which record_id deduplicates
                self._failure(f"removing shipped {path.name}", e)
        return True

    def _spill_paths(self) -> list[Path]:
        try:
            entries = sorted(self.spill_dir.iterdir())
        except OSError as e:
            self._failure(f"listing {self.spill_dir}", e)
            return []
        return [p for p in entries if p.name not in self._unmovable and not p.is_dir()]

    def _quarantine(self, path: Path, why: str) -> None:
        QUARANTINED.inc()
        self._unindexed(path.name)
        try:
            self.quarantine_dir.mkdir(exist_ok=True)
            path.replace(self.quarantine_dir / path.name)
            where = f"moved to {self.quarantine_dir}"
        except OSError as e:
            self._unmovable.add(path.name)
            where = f"left in place, could not be moved: {e}"
        log.error("prediction log: spill file %s %s; %s", path.name, why, where)

    # -- shutdown ---------------------------------------------------------------------------------------
    def close(self, budget: float = 20.0) -> int:
        """Stop: memory to the spill directory first (local and fast), then ship for up to `budget` seconds
        (plus at most one write in progress, PUT_TIMEOUT). Returns the number of records not delivered; those
        are logged with their number and stay in the spill directory for the next start."""
        if self._closed:
            return self._undelivered
        self._deadline = time.monotonic() + budget
        self._budget = budget
        self._closing.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(budget + PUT_TIMEOUT + 1)
            if self._thread.is_alive():
                self._undelivered = len(self._buffer) + self.spilled_records()
                log.error("prediction log: shutdown budget exceeded with a write in progress; %d records in "
                          "memory are lost, %d stay in %s", len(self._buffer), self.spilled_records(), self.spill_dir)  # fmt: skip
        elif not self._closed:
            self._shutdown()
        self._closed = True
        return self._undelivered

    def _shutdown(self) -> None:
        with self._flush_lock:
            try:
                self._putback(self._spill(self._take(), make_room=False))
                backoff = 0.2
                while True:
                    if self._ship_spill(self._deadline):
                        self._putback(self._write(self._take(), self._deadline))
                    if not self._buffer and not self.spilled_records():
                        break
                    if time.monotonic() + backoff >= self._deadline:
                        break
                    time.sleep(backoff)
                    backoff = min(2.0, backoff * 2)
            except Exception as e:
                self._failure("shutdown", e, exc_info=True)
            in_memory, spilled = len(self._buffer), self.spilled_records()
            self._undelivered = in_memory + spilled
            if in_memory:
                self._drop(in_memory, "shutdown: the spill directory could not take them")
            if not self._undelivered:
                log.info("prediction log: every record delivered (%d written since start)", WRITTEN._value.get())
            if spilled:
                log.warning("prediction log: %d records not delivered within the %g s shutdown budget; they stay in "
                            "%s and are shipped at the next start on it (lost if the directory is deleted)",
                            spilled, self._budget, self.spill_dir)  # fmt: skip
            self._closed = True
