"""The drift decision (alibi-detect, calibrated at the window size) and the human report (evidently).

Raw p-values mislead here: chi-squared on ~260 zones with sparse counts, and K-S at tens of thousands
of rides, flag differences no one cares about. So the decision threshold is calibrated: the reference is
split in two halves; windows of the current size are drawn from one half and tested against the other
(the detector's reference) `n_calibration` times; the threshold is the `false_alarm_rate` quantile of the
smallest per-column p-value. A window from the reference distribution then raises drift in about that
fraction of runs, whatever its size. Windows larger than MAX_CALIBRATION_SIZE are calibrated at that
size, to bound the time it takes; beyond it the reference, not the window, limits what the tests see. Zones too rare to expect 5 rides in a window are pooled as "other"
(0) before testing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from monitoring import storage
from monitoring.inputs import FEATURES, PREDICTION, ZONES

log = logging.getLogger("monitoring")
OTHER_ZONE = 0
MIN_EXPECTED = 5
MAX_CALIBRATION_SIZE = 20_000


@dataclass
class ColumnResult:
    column: str
    test: str
    p_value: float
    threshold: float
    drifted: bool
    distance: float | None = None  # evidently's drift score (Jensen-Shannon / normed Wasserstein)
    distance_method: str | None = None


def size_bucket(n: int) -> int:
    """Calibrate at two significant digits of the window size: close windows share one calibration."""
    digits = max(0, len(str(n)) - 2)
    return max(1, round(n, -digits))


class Calibrated:
    def __init__(
        self,
        reference: pd.DataFrame,
        columns: list[str],
        window_size: int,
        false_alarm_rate: float = 0.005,
        n_calibration: int = 1000,
        seed: int = 0,
        cache_uri: str | None = None,
    ):
        from alibi_detect.cd import TabularDrift

        self.columns = columns
        self.false_alarm_rate = false_alarm_rate
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(reference))
        half = len(reference) // 2
        self.detector_ref = reference.iloc[order[:half]].reset_index(drop=True)
        self.pool = reference.iloc[order[half:]].reset_index(drop=True)
        self.n = min(size_bucket(window_size), MAX_CALIBRATION_SIZE)
        self.kept_zones = {}
        for z in ZONES:
            frequencies = reference[z].value_counts(normalize=True)
            self.kept_zones[z] = set(frequencies[frequencies * window_size >= MIN_EXPECTED].index.astype(int))
        self.categorical = {i: None for i, c in enumerate(columns) if c in ZONES}
        self.detector = TabularDrift(
            self.encode(self.detector_ref), p_val=0.05, categories_per_feature=self.categorical, correction="bonferroni"
        )

        key = hashlib.sha256(
            pd.util.hash_pandas_object(reference[columns], index=False).values.tobytes()
            + json.dumps([columns, self.n, size_bucket(window_size), false_alarm_rate, n_calibration, seed]).encode()
        ).hexdigest()[:24]
        cached = self._read_cache(cache_uri, key)
        if cached is not None:
            self.threshold = cached
        else:
            self.threshold = self._calibrate(n_calibration, rng)
            self._write_cache(cache_uri, key)

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        out = frame[self.columns].copy()
        for z in ZONES:
            if z in out:
                out[z] = out[z].where(out[z].isin(self.kept_zones[z]), OTHER_ZONE)
        return out.to_numpy(dtype=np.float64)

    def p_values(self, frame: pd.DataFrame) -> np.ndarray:
        return self._p_values(self.encode(frame))

    def _p_values(self, x: np.ndarray) -> np.ndarray:
        result = self.detector.predict(x, drift_type="feature", return_p_val=True)
        return np.asarray(result["data"]["p_val"], dtype=np.float64)

    def _calibrate(self, n_calibration: int, rng: np.random.Generator) -> float:
        log.info("calibrating drift thresholds: %d windows of %d rides from the reference", n_calibration, self.n)
        pool = self.encode(self.pool)
        smallest = [
            # With replacement: windows drawn without it from a finite pool vary less than real windows do.
            self._p_values(pool[rng.choice(len(pool), self.n, replace=True)]).min() for _ in range(n_calibration)
        ]
        return float(np.quantile(smallest, self.false_alarm_rate))

    def _read_cache(self, cache_uri: str | None, key: str) -> float | None:
        if not cache_uri:
            return None
        uri = storage.join(cache_uri, f"{key}.json")
        try:
            return float(json.loads(storage.read_bytes(uri))["threshold"])
        except Exception:
            return None

    def _write_cache(self, cache_uri: str | None, key: str) -> None:
        if not cache_uri:
            return
        body = json.dumps({"threshold": self.threshold, "window_size": self.n, "columns": self.columns}).encode()
        try:
            storage.write_bytes(storage.join(cache_uri, f"{key}.json"), body, "application/json")
        except Exception as e:  # a cache that cannot be written costs time next run, nothing else
            log.warning("could not cache the calibration at %s: %s", cache_uri, e)

    def test(self, current: pd.DataFrame) -> list[ColumnResult]:
        p = self.p_values(current)
        return [
            ColumnResult(c, "chi2" if c in ZONES else "ks", float(p[i]), self.threshold, bool(p[i] < self.threshold))
            for i, c in enumerate(self.columns)
        ]


def evidently_report(reference: pd.DataFrame, current: pd.DataFrame, columns: list[str]):
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import DriftedColumnsCount, ValueDrift

    definition = DataDefinition(
        numerical_columns=[c for c in columns if c not in ZONES],
        categorical_columns=[c for c in columns if c in ZONES],
    )
    # Explicit per-column metrics and no default tests: include_tests adds checks that fail on normal runs.
    report = Report([ValueDrift(column=c) for c in columns] + [DriftedColumnsCount()])
    return report.run(
        Dataset.from_pandas(current[columns].reset_index(drop=True), data_definition=definition),
        Dataset.from_pandas(reference[columns].reset_index(drop=True), data_definition=definition),
    )


def evidently_distances(snapshot) -> dict[str, tuple[float, str]]:
    out = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric.get("config", {})
        if config.get("type", "").endswith("ValueDrift"):
            out[config["column"]] = (float(metric["value"]), config.get("method"))
    return out


def prediction_plot(reference: pd.DataFrame, current: pd.DataFrame) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    bins = np.linspace(0, 60, 61)
    ax.hist(reference[PREDICTION], bins=bins, density=True, alpha=0.5, label=f"reference ({len(reference):,})")
    ax.hist(current[PREDICTION], bins=bins, density=True, alpha=0.5, label=f"current ({len(current):,})")
    ax.set_xlabel("predicted duration (minutes)")
    ax.set_ylabel("density")
    ax.set_title("trip-duration predictions: reference vs current window")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def columns_for(reference: pd.DataFrame, current: pd.DataFrame) -> list[str]:
    both = PREDICTION in reference.columns and PREDICTION in current.columns
    return FEATURES + ([PREDICTION] if both else [])


def as_dict(results: list[ColumnResult]) -> dict:
    return {r.column: {k: v for k, v in asdict(r).items() if k != "column"} for r in results}
