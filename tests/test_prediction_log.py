"""The prediction log's promise under real faults: S3 cut or hanging (a TCP proxy in front of the S3 server, which
keeps its objects), SIGTERM and SIGKILL of the transformer, a restart on the same spill directory."""

from __future__ import annotations

import re
import signal
import threading
import time
from collections import Counter

import pytest
import requests

from harness import TcpProxy, metric, read_prediction_logs, run_cli, start_transformer, unique, wait_until
from local import traffic

PATH = "/v1/models/trip-duration:predict"
# Short timings; the defaults are in `python -m transformer --help`.
FAST = {"PREDICTION_LOG_FLUSH_SECONDS": "0.5", "PREDICTION_LOG_SHUTDOWN_SECONDS": "2"}


def ride(ride_id):
    return {"ride_id": ride_id, "ride": {"PULocationID": 100, "DOLocationID": 102, "trip_distance": 3.5}}


@pytest.fixture(scope="module")
def dispatched(months) -> list[dict]:
    """A month's rides as a dispatcher sends them: in pick-up order, unfiltered (meter glitches and all)."""
    return [traffic.instance(row) for row in traffic.rides(str(months["val"]), 3000).itertuples()]


class Traffic:
    """Clients sending `instances` (each under a ride_id of its own) as single rides and 5-ride batches to `url`
    (which a test may switch), keeping which rides were scored and which were refused."""

    def __init__(self, url: str, tag: str, instances: list[dict], clients: int = 2):
        self.url = url
        self.tag = tag
        self.instances = instances
        self.accepted: dict[str, float] = {}  # ride_id -> when its duration arrived (monotonic)
        self.refused: set[str] = set()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(clients)]

    def start(self) -> "Traffic":
        [t.start() for t in self._threads]
        return self

    def stop(self) -> None:
        self._stop.set()
        [t.join() for t in self._threads]

    def _client(self, n: int) -> None:
        session, i = requests.Session(), 0
        while not self._stop.is_set():
            rides = [{**self.instances[(i + j) % len(self.instances)], "ride_id": f"{self.tag}-{n}-{i + j}"}
                     for j in range(1 if i % 2 else 5)]  # fmt: skip
            i += len(rides)
            try:
                r = session.post(self.url + PATH, json=rides[0] if len(rides) == 1 else {"instances": rides}, timeout=10)
            except requests.RequestException:  # the transformer is restarting
                session = requests.Session()
                time.sleep(0.05)
                continue
            now = time.monotonic()
            if r.status_code == 200:
                items = r.json()["predictions"] if len(rides) > 1 else [r.json()]
                self.accepted.update((x["ride_id"], now) for x in items if "error" not in x)
                self.refused.update(x["ride_id"] for x in items if "error" in x)
            elif r.status_code == 400:
                self.refused.add(rides[0]["ride_id"])
            time.sleep(0.02)


@pytest.fixture
def s3_proxy(s3):
    proxy = TcpProxy(s3.url).start()
    yield proxy
    proxy.cut()


def logged_once(s3, log_uri: str, accepted, refused=()) -> None:
    records = read_prediction_logs(s3, log_uri)
    assert not {r["ride_id"] for r in records} & set(refused), "a refused ride was logged"
    deduplicated = {r["record_id"]: r["ride_id"] for r in records}
    missing = set(accepted) - set(deduplicated.values())
    assert not missing, f"{len(missing)} of {len(accepted)} accepted rides missing from the logs"
    assert Counter(deduplicated.values()) == Counter(list(accepted)), "after dedup by record_id, each ride exactly once"


def test_s3_outage_sigterm_and_restart_lose_no_ride(workdir, s3, s3_proxy, predictor, model, tmp_path, dispatched):
    """Cut S3 under traffic, SIGTERM while it is down, start again on the same spill dir, restore S3: every ride."""
    log_uri = f"s3://predictions/{unique('outage')}"
    env = {**FAST, "AWS_ENDPOINT_URL": s3_proxy.url, "PREDICTION_LOG_SPILL_DIR": str(tmp_path / "spill")}
    first, url = start_transformer(workdir, s3, predictor[1], log_uri, model["version"], **env)
    traffic = Traffic(url, "outage", dispatched).start()
    try:
        wait_until(lambda: metric(url, "prediction_log_records_written_total") >= 20, "logs before the outage")
        s3_proxy.cut()
        wait_until(lambda: metric(url, "prediction_log_records_spilled") > 0, "records spilled while S3 is down")
        time.sleep(1)
        assert metric(url, "prediction_log_flush_failures_total") >= 1
        assert metric(url, "prediction_log_records_dropped_total") == 0

        started = time.monotonic()
        assert first.stop(signal.SIGTERM) == 0, first.log()[-3000:]
        assert time.monotonic() - started < 2 + 8 + 5  # the budget, one bounded S3 put, start-up slack
        left = re.search(r"prediction log: (\d+) records not delivered within the 2 s shutdown budget", first.log())
        assert left and int(left[1]) > 0, first.log()[-3000:]
        (tmp_path / "spill" / "garbage.jsonl.gz").write_bytes(b"not gzip")  # must not stop the next start

        second, traffic.url = start_transformer(workdir, s3, predictor[1], log_uri, model["version"], **env)
        try:
            wait_until(lambda: metric(traffic.url, "prediction_log_records_spilled") >= int(left[1]),
                       "the spilled records seen at start")  # fmt: skip
            time.sleep(1)  # traffic on the second process while S3 is still down
            s3_proxy.restore()
            wait_until(lambda: metric(traffic.url, "prediction_log_records_spilled") == 0, "the spill shipped", timeout=60)
            assert metric(traffic.url, "prediction_log_spill_files_quarantined_total") == 1
            assert (tmp_path / "spill" / "quarantine" / "garbage.jsonl.gz").exists()
        finally:
            traffic.stop()
            assert second.stop(signal.SIGTERM) == 0, second.log()[-3000:]
    finally:
        traffic.stop()
        first.stop()
    assert any(k.startswith("outage-") for k in traffic.accepted) and len(traffic.accepted) > 100
    logged_once(s3, log_uri, traffic.accepted, traffic.refused)


def test_sigkill_during_an_outage_loses_at_most_the_last_flush_interval(workdir, s3, s3_proxy, predictor, model, tmp_path,
                                                                         dispatched):
    log_uri = f"s3://predictions/{unique('sigkill')}"
    env = {**FAST, "AWS_ENDPOINT_URL": s3_proxy.url, "PREDICTION_LOG_SPILL_DIR": str(tmp_path / "spill")}
    proc, url = start_transformer(workdir, s3, predictor[1], log_uri, model["version"], **env)
    s3_proxy.cut()
    traffic = Traffic(url, "kill", dispatched).start()
    try:
        wait_until(lambda: len(traffic.accepted) >= 300, "300 accepted rides")
        killed_at = time.monotonic()
        proc.stop(signal.SIGKILL)
    finally:
        traffic.stop()
    s3_proxy.restore()
    proc, url = start_transformer(workdir, s3, predictor[1], log_uri, model["version"], **env)
    try:
        wait_until(lambda: metric(url, "prediction_log_records_spilled") == 0, "the spill shipped", timeout=60)
    finally:
        assert proc.stop(signal.SIGTERM) == 0
    logged = {r["ride_id"] for r in read_prediction_logs(s3, log_uri)}
    lost = {ride_id: killed_at - at for ride_id, at in traffic.accepted.items() if ride_id not in logged}
    # Flushed every 0.5 s; allow 1 s more for a flush in progress and a busy machine.
    assert all(age <= 1.5 for age in lost.values()), sorted(lost.values())[-5:]
    assert len(lost) < len(traffic.accepted) / 3


def test_sigterm_with_s3_hanging_ends_within_the_budget(workdir, s3, s3_proxy, predictor, model, tmp_path):
    """S3 accepts connections and never answers: every put is bounded, so the shutdown budget holds."""
    env = {**FAST, "AWS_ENDPOINT_URL": s3_proxy.url, "PREDICTION_LOG_SPILL_DIR": str(tmp_path / "spill")}
    proc, url = start_transformer(workdir, s3, predictor[1], f"s3://predictions/{unique('hang')}", model["version"], **env)
    s3_proxy.stall()
    for i in range(20):
        assert requests.post(url + PATH, json=ride(f"hang-{i}"), timeout=10).status_code == 200
    time.sleep(1)  # a flush is now waiting on S3
    started = time.monotonic()
    assert proc.stop(signal.SIGTERM, timeout=60) == 0, proc.log()[-3000:]
    # 2 s budget, plus one put in progress (connect 2 s + 1 s for "100 Continue" + read 5 s), plus slack.
    assert time.monotonic() - started < 2 + 8 + 3
    assert re.search(r"prediction log: \d+ records not delivered", proc.log())
    assert list((tmp_path / "spill").glob("*.jsonl.gz")), "undelivered records stay in the spill directory"


def test_sigterm_under_load_flushes_every_accepted_ride(workdir, s3, predictor, model, dispatched):
    log_uri = f"s3://predictions/{unique('sigterm')}"
    # Long flush interval: without the shutdown flush, most records would still be in memory.
    proc, url = start_transformer(workdir, s3, predictor[1], log_uri, model["version"],
                                  PREDICTION_LOG_FLUSH_SECONDS="60", PREDICTION_LOG_FLUSH_RECORDS="100000")  # fmt: skip
    traffic = Traffic(url, "sigterm", dispatched, clients=4).start()
    try:
        wait_until(lambda: len(traffic.accepted) >= 200, "200 accepted rides")
        assert proc.stop(signal.SIGTERM, timeout=60) == 0, proc.log()[-3000:]
    finally:
        traffic.stop()
    logged_once(s3, log_uri, traffic.accepted, traffic.refused)


def test_a_spill_directory_that_cannot_be_made_is_one_clear_error(tmp_path):
    (tmp_path / "a-file").write_text("")
    result = run_cli("transformer", "--predictor_host", "127.0.0.1:1", "--http_port", "0",
                     env={"PREDICTION_LOG_SPILL_DIR": str(tmp_path / "a-file" / "spill")}, timeout=120)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "error: PREDICTION_LOG_SPILL_DIR=" in result.stderr and "Traceback" not in result.stderr
