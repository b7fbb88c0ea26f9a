"""How often the drift decision alarms on TLC's own months, and how often it catches a real shift.

    monitoring/.venv/bin/python bench/drift_calibration.py [--json bench/results/drift_calibration.json]

Needs the official months (DATA_DIR, or ../shared/data/nyc-tlc next to the repository). For each window size:
windows of raw rides of 2022-02 (features only, as the transformer receives them) judged against 2022-02 as
TLC published it; a lockdown month (2021-01) judged against 2022-02; the detection power the calibration
measures for stated synthetic shifts. Then every day of 2022-02 and of 2022-01 judged against its own month.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import pandas as pd

import ride
from monitoring.drift import DriftTest
from ride.tlc import serving_month

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DATA_DIR") or ROOT.parent / "shared" / "data" / "nyc-tlc")
COLUMNS = list(ride.FEATURES)


def month(name: str) -> pd.DataFrame:
    try:
        return serving_month(name, DATA)
    except FileNotFoundError as e:
        sys.exit(f"error: {e}")


def alarms(detector: DriftTest, windows) -> int:
    return sum(any(r.drifted for r in detector.test(w)) for w in windows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs=2, default=[100, 50], help="windows of 5,000 and of 20,000 rides")
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "drift_calibration.json")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    feb, jan, lockdown = month("2022-02"), month("2022-01"), month("2021-01")

    sizes = []
    for size, seeds in zip((5000, 20_000), args.seeds):
        started = time.perf_counter()
        detector = DriftTest(feb, COLUMNS, size)
        same = alarms(detector, (feb.sample(size, random_state=s)[COLUMNS] for s in range(seeds)))
        caught = alarms(detector, (lockdown.sample(size, random_state=s) for s in range(20)))
        row = {"window": size, "seeds": seeds, "false_alarms": same, "lockdown_detected": caught, "lockdown_windows": 20,
               **{f"power_{k}": v for k, v in detector.calibration.power.items()},
               "calibration_windows": detector.calibration.windows, "seconds": time.perf_counter() - started}  # fmt: skip
        sizes.append(row)
        print(row, file=sys.stderr)

    days = []
    for name, rides in (("2022-02", feb), ("2022-01", jan)):
        rides = rides[rides[ride.PICKUP_TIME].dt.strftime("%Y-%m") == name]
        by_day = dict(tuple(rides.groupby(rides[ride.PICKUP_TIME].dt.day)))
        cache = str(ROOT / "bench" / "results" / "calibration")
        flagged = [d for d, day in by_day.items() if alarms(DriftTest(rides, COLUMNS, len(day), cache_uri=cache), [day])]
        days.append({"month": name, "days": len(by_day), "flagged": flagged})
        print(days[-1], file=sys.stderr)

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"windows": sizes, "days": days}, indent=2))
    print("| window (rides) | raw windows of 2022-02 flagged | 2021-01 windows flagged | 20 % longer trips caught | "
          "20 % of pick-ups moved caught |")  # fmt: skip
    print("|---|---|---|---|---|")
    for r in sizes:
        print(f"| {r['window']:,} | {r['false_alarms']} of {r['seeds']} | {r['lockdown_detected']} of {r['lockdown_windows']} | "
              f"{r['power_longer_trips']:.0%} | {r['power_moved_zones']:.0%} |")  # fmt: skip
    print()
    for d in days:
        print(f"every day of {d['month']} against the month: {len(d['flagged'])} of {d['days']} flagged {d['flagged'] or ''}")


if __name__ == "__main__":
    main()
