"""Soak: traffic at a fixed rate through the system on one machine (`local`) for 10 minutes, with faults:

- S3 cut for 30 s (a TCP proxy in front of it refuses and drops connections; the server keeps its objects);
- the predictor stopped and started again;
- S3 cut for a minute; 40 s into it the transformer gets SIGTERM and starts again on the same spill directory
  and port; then S3 comes back.

Checks that every accepted ride is logged, exactly once after dedup by record_id, that the transformer's
memory stays bounded, and that 5xx or connection errors happen only while the predictor or the transformer is
down.

    tests/.venv/bin/python bench/soak.py [--minutes 10] [--rate 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from ride.reader import read_predictions
from local.cli import run_step
from local.processes import ROOT, S3Endpoint, mlflow_server, start_predictor, start_transformer
from local.proxy import TcpProxy
from local.synthetic import synthetic_month

PATH = "/v1/models/trip-duration:predict"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def traffic(url: str, rate: float, seconds: float, results: list) -> None:
    """Open loop: one request every 1/rate s, whatever the answers do, each with a unique ride id."""
    async with httpx.AsyncClient(timeout=15, limits=httpx.Limits(max_connections=64)) as client:

        async def one(i: int):
            ride_id = f"soak-{i}"
            body = {"ride_id": ride_id, "ride": {"PULocationID": 1 + i % 265, "DOLocationID": 1 + (3 * i) % 265,
                                                  "trip_distance": round((i % 300) / 10, 1)}}  # fmt: skip
            sent = time.monotonic()
            try:
                status = (await client.post(url + PATH, json=body)).status_code
            except httpx.HTTPError:
                status = 0
            results.append((sent, ride_id, status))

        tasks, start, i = [], time.monotonic(), 0
        while time.monotonic() - start < seconds:
            tasks.append(asyncio.create_task(one(i)))
            i += 1
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        await asyncio.gather(*tasks)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--rate", type=float, default=40, help="requests per second (default 40)")
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    args = p.parse_args()
    seconds = args.minutes * 60

    work = Path(tempfile.mkdtemp(prefix="soak-"))
    s3 = S3Endpoint(work / "s3").start()
    proxy = TcpProxy(s3.url).start()
    state = {}
    try:
        mlflow_proc, mlflow_url = mlflow_server(work / "mlflow", s3)
        state["mlflow"] = mlflow_proc
        months = synthetic_month(work / "m1.parquet", 2030, 1), synthetic_month(work / "m2.parquet", 2030, 2)
        trained = run_step("training", ["train", "--train-data", str(months[0]), "--val-data", str(months[1])],
                           {**s3.env_for("training"), "MLFLOW_TRACKING_URI": mlflow_url}, work / "train.log")["json"]  # fmt: skip
        state["predictor"], host = start_predictor(work, s3, trained["storage_uri"])
        log_uri = "s3://predictions/soak"
        # The transformer reaches S3 through the proxy; the predictor (which loads the model at start) does not.
        transformer_env = {"AWS_ENDPOINT_URL": proxy.url, "PREDICTION_LOG_SPILL_DIR": str(work / "spill")}
        state["transformer"], url = start_transformer(work, s3, host, log_uri, trained["version"], **transformer_env)
        port = int(url.rsplit(":", 1)[1])

        def restart_transformer():
            state["transformer"].stop(signal.SIGTERM, timeout=120)
            # Same port, so the same log file: it holds both processes' lines.
            state["transformer"], _ = start_transformer(work, s3, host, log_uri, trained["version"], port=port,
                                                        **transformer_env)  # fmt: skip

        events, memory = [], []

        def chaos():
            t0 = time.monotonic()

            def at(fraction, what, action):
                time.sleep(max(0.0, t0 + fraction * seconds - time.monotonic()))
                began = time.monotonic()
                action()
                events.append((began, time.monotonic(), what))
                print(f"  {began - t0:5.0f}s {what} ({time.monotonic() - began:.0f} s)", file=sys.stderr)

            at(0.20, "S3 cut", proxy.cut)
            at(0.25, "S3 restored", proxy.restore)
            at(0.40, "predictor stopped", lambda: state["predictor"].stop())
            at(0.43, "predictor started", lambda: state.update(
                predictor=start_predictor(work, s3, trained["storage_uri"], port=int(host.split(":")[1]))[0]))
            outage = 60 / seconds
            at(0.60, "S3 cut", proxy.cut)
            at(0.60 + outage * 2 / 3, "transformer SIGTERM, started again on the same spill directory",
               restart_transformer)
            at(0.60 + outage, "S3 restored", proxy.restore)

        def sample():
            while not done.is_set():
                try:
                    if rss := rss_mb(state["transformer"].proc.pid):
                        memory.append(rss)
                except OSError:
                    pass  # between two transformer processes
                time.sleep(2)

        done = threading.Event()
        threads = [threading.Thread(target=chaos), threading.Thread(target=sample)]
        [t.start() for t in threads]
        results: list = []
        asyncio.run(traffic(url, args.rate, seconds, results))
        threads[0].join()
        done.set()
        state["transformer"].stop(signal.SIGTERM, timeout=120)

        def window(first, last):
            """From the start of the first event to 5 s after the end of the last."""
            return (next(began for began, _, what in events if what.startswith(first)) - 1,
                    next(ended for _, ended, what in events if what.startswith(last)) + 5)  # fmt: skip

        down = [window("predictor stopped", "predictor started"), window("transformer SIGTERM", "transformer SIGTERM")]
        accepted = {ride for _, ride, status in results if status == 200}
        logged = read_predictions(log_uri, credentials=s3.env_for())  # deduplicated by record_id
        per_ride = Counter(logged.frame["ride_id"])
        t0 = results[0][0] if results else 0
        errors = [(t, status) for t, _, status in results if status >= 500 or status == 0]
        outside = [e for e in errors if not any(start <= e[0] <= end for start, end in down)]
        # What the transformer processes counted and logged: left in the spill directory at SIGTERM, dropped.
        logs = state["transformer"].log()
        left_at_sigterm = [int(n) for n in re.findall(r"prediction log: (\d+) records not delivered", logs)]
        dropped = sum(int(n) for n in re.findall(r"prediction log: dropped (\d+) records", logs))
        timeline = [[what, round(began - t0, 1), round(ended - t0, 1)] for began, ended, what in events]
        report = {
            "minutes": args.minutes,
            "rate": args.rate,
            "requests": len(results),
            "accepted": len(accepted),
            "logged_records": len(logged.frame) + logged.duplicates,
            "duplicates_before_dedup": logged.duplicates,
            "unreadable_log_objects": logged.unreadable,
            "accepted_missing_from_logs": len(accepted - set(per_ride)),
            "accepted_logged_more_than_once": sum(1 for r in accepted if per_ride[r] > 1),
            "errors_5xx_or_connection": len(errors),
            "errors_outside_predictor_or_transformer_restart": len(outside),
            "log_records_left_in_spill_at_sigterm": left_at_sigterm,
            "log_records_dropped_counted": dropped,
            "log_spill_files_quarantined": logs.count("prediction log: spill file "),
            "errors_outside_detail": [{"sent_s": round(t - t0, 2), "status": status} for t, status in outside[:20]],
            "events_s": timeline,
            "transformer_peak_rss_mb": max(memory) if memory else None,
            "transformer_rss_first_last_mb": [memory[0], memory[-1]] if memory else None,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(json.dumps(report, indent=2))
        ok = not report["accepted_missing_from_logs"] and not report["accepted_logged_more_than_once"] and not outside
        sys.exit(0 if ok else 1)
    finally:
        for proc in state.values():
            proc.stop()
        proxy.cut()
        s3.stop()


if __name__ == "__main__":
    main()
