"""Drift-job benchmark: wall time and peak memory of `python -m monitoring` over 100k and 1M logged
records (gzipped JSONL objects of 500 records, in the transformer's format) against a 60k reference.

    tests/.venv/bin/python bench/drift.py [--sizes 100000 1000000] [--json bench/results/drift.json]

Target on 2 cores: 1M records in <= 60 s and <= 2 GB. Each size runs twice: with an empty calibration
cache (the first run at a new window size) and with the cache filled (every later run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

import ride
from local.processes import ROOT, component_python

PER_OBJECT = 500


def synthetic(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    weights = np.random.default_rng(42).pareto(1.2, 265) + 0.01
    distance = np.round(rng.gamma(1.8, 1.7, n), 2)
    return pd.DataFrame(
        {
            "PULocationID": rng.choice(np.arange(1, 266), n, p=weights / weights.sum()),
            "DOLocationID": rng.choice(np.arange(1, 266), n, p=weights / weights.sum()),
            "trip_distance": distance,
            "prediction": 4 + 3.1 * distance + rng.normal(0, 2, n),
        }
    )


def write_logs(root: Path, n: int, end: datetime) -> None:
    frame = synthetic(n, seed=n)
    start = end - timedelta(hours=23)
    for first in range(0, n, PER_OBJECT):
        chunk = frame.iloc[first : first + PER_OBJECT]
        ts = start + timedelta(seconds=(first / n) * 23 * 3600)
        stamp = ride.utc_timestamp(ts)
        records = [
            ride.log_record(ride.Ride(f"r{first + i}", int(r.PULocationID), int(r.DOLocationID), float(r.trip_distance)),
                            float(r.prediction), model_name="trip-duration", model_version="1", request_id="bench",
                            ts=stamp, latency_ms=1.0)
            for i, r in enumerate(chunk.itertuples())
        ]  # fmt: skip
        path = root / ride.log_key("trip-duration", stamp)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(ride.jsonl_gz(records))


def measure(args: list[str]) -> dict:
    started = time.perf_counter()
    proc = subprocess.Popen([component_python("monitoring"), "-m", "monitoring", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    summary = json.loads(out.decode().strip().splitlines()[-1])
    return {"seconds": elapsed, "peak_rss_mb": usage.ru_maxrss / 1024, "exit": os.waitstatus_to_exitcode(status),
            "n_current": summary["n_current"], "drift": summary["drift"]}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "drift.json")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-drift-"))
    try:
        reference = work / "reference.parquet"
        synthetic(60_000, seed=1).to_parquet(reference)
        end = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
        rows = []
        for n in args.sizes:
            logs = work / f"logs-{n}"
            write_logs(logs, n, end)
            cache = work / f"calibration-{n}"
            common = ["--reference", str(reference), "--current", str(logs), "--until", end.isoformat(),
                      "--calibration-cache", str(cache), "--report-uri", str(work / "reports")]  # fmt: skip
            for label in ("cold calibration", "cached calibration"):
                row = {"records": n, "run": label, **measure(common)}
                rows.append(row)
                print(f"{n:>9,} records, {label:<18} {row['seconds']:6.1f} s  {row['peak_rss_mb']:7.0f} MB  "
                      f"rides read {row['n_current']:,}  drift {row['drift']}", file=sys.stderr)  # fmt: skip
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
        print("| records | calibration | seconds | peak memory (MB) |")
        print("|---|---|---|---|")
        for r in rows:
            print(f"| {r['records']:,} | {r['run'].split()[0]} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
