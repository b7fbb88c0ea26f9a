"""The drift decision and the report that shows it.

A window of served rides is compared with the model's reference, column by column: chi-squared on the zones,
Kolmogorov-Smirnov on the distance and the predicted duration (alibi-detect's TabularDrift computes the
statistics). Raw p-values cannot be trusted here: real windows are stretches of time, and a day's rides differ
from the month's mix (weekends, weather, events) far beyond what i.i.d. sampling predicts. So each column's
threshold is *calibrated* on windows shaped like the job's: contiguous stretches of the reference period (in
pick-up order), as many rides as the current window, each judged against the rest of the reference (leave one
out). The threshold is the `false_alarm_rate / columns` quantile of those p-values (never above that rate
itself, which is right when windows vary no more than random samples). The same calibration
measures the detection power for stated shifts, so "never alarms" cannot be bought by never detecting.

Zones too rare to expect MIN_EXPECTED rides in a window are pooled as OTHER_ZONE (0) before testing.
The evidently report runs the very same tests with the calibrated thresholds: it shows the job's verdict.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from ride import store
from ride import FEATURES, MAX_DURATION, MIN_DURATION, PICKUP_TIME, PREDICTION, TARGET, ZONE_COLUMNS

log = logging.getLogger("monitoring")
OTHER_ZONE = 0
MIN_EXPECTED = 5
# The calibration's settings and algorithm, in its cache key: change this when the algorithm changes.
CALIBRATION_SCHEME = "contiguous-leave-one-out-v1"
# Detection power is reported for these shifts of a window like the reference's.
LONGER_TRIPS = 0.2  # every trip 20 % longer
MOVED_ZONES = 0.2  # 20 % of rides picked up in a zone drawn at random from the reference's zones


@dataclass
class ColumnResult:
    column: str
    test: str
    p_value: float
    threshold: float
    drifted: bool


@dataclass
class Calibration:
    thresholds: dict[str, float]
    window_size: int  # rides per calibration window
    windows: int  # how many windows the thresholds rest on
    ordered_by: str  # pick-up time, or the reference's row order when it has none
    power: dict[str, float] = field(default_factory=dict)  # shift -> share of windows flagged


def judged(window, size: int):
    """The rides of a window that are judged: all, or an even sample (the same rows every time) when it holds more
    than the calibrated size. Works on a table or on one of its columns alike."""
    return window if len(window) <= size else window.sample(size, random_state=0).reset_index(drop=True)


def size_bucket(n: int) -> int:
    """Two significant digits of the window size: close windows share one calibration."""
    digits = max(0, len(str(n)) - 2)
    return max(1, round(n, -digits))


def columns_for(reference: pd.DataFrame, current: pd.DataFrame) -> list[str]:
    both = PREDICTION in reference.columns and PREDICTION in current.columns
    return list(FEATURES) + ([PREDICTION] if both else [])


def test_name(column: str) -> str:
    return "chi2" if column in ZONE_COLUMNS else "ks"


class ColumnTests:
    """Per-column p-values of a window against a reference, in float64.

    alibi-detect's TabularDrift gives the statistics; it also gives p-values, but as float32, which are 0 below
    ~1e-45, and pick-up zones on ordinary days sit near 1e-60. So the p-values are computed here from its
    statistics with the same distributions scipy applies (chi-squared with the contingency table's degrees of
    freedom; the two-sample K-S distribution, asymptotic, as TabularDrift asks).
    """

    def __init__(self, reference: np.ndarray, columns: list[str]):
        from alibi_detect.cd import TabularDrift

        self.columns = columns
        self.zones = [i for i, c in enumerate(columns) if c in ZONE_COLUMNS]
        self.n_reference = len(reference)
        self.detector = TabularDrift(reference, p_val=0.05, categories_per_feature={i: None for i in self.zones})

    def p_values(self, window: np.ndarray) -> np.ndarray:
        from scipy.stats import chi2, kstwo

        result = self.detector.predict(window, drift_type="feature", return_p_val=True, return_distance=True)
        statistics = np.asarray(result["data"]["distance"], dtype=np.float64)
        n, m = self.n_reference, len(window)
        p = np.empty(len(self.columns))
        for i, statistic in enumerate(statistics):
            if i in self.zones:
                categories = set(self.detector.x_ref_categories[i]) | set(np.unique(window[:, i]).tolist())
                p[i] = chi2.sf(statistic, max(1, len(categories) - 1))
            else:
                p[i] = kstwo.sf(statistic, round(n * m / (n + m)))
        return p


class DriftTest:
    """Judges windows of `window_size` rides against `reference`, with thresholds calibrated for such windows."""

    def __init__(
        self,
        reference: pd.DataFrame,
        columns: list[str],
        window_size: int,
        false_alarm_rate: float = 0.005,
        calibration_windows: int = 100,
        cache_uri: str | None = None,
    ):
        self.columns = columns
        ordered = bool(PICKUP_TIME in reference.columns and reference[PICKUP_TIME].notna().any())
        self.reference = reference.sort_values(PICKUP_TIME, kind="stable") if ordered else reference
        self.reference = self.reference.reset_index(drop=True)
        self.window_size = min(size_bucket(window_size), len(reference) // 3)
        self.kept_zones = {}
        for z in ZONE_COLUMNS:
            share = reference[z].value_counts(normalize=True)
            self.kept_zones[z] = sorted(int(v) for v in share[share * self.window_size >= MIN_EXPECTED].index)
        self.tests = ColumnTests(self.encode(self.reference), columns)

        key = hashlib.sha256(
            pd.util.hash_pandas_object(self.reference[columns], index=False).values.tobytes()
            + json.dumps([CALIBRATION_SCHEME, columns, self.window_size, ordered, self.kept_zones, false_alarm_rate,
                          calibration_windows, LONGER_TRIPS, MOVED_ZONES]).encode()  # fmt: skip
        ).hexdigest()[:24]
        self.calibration = self._read_cache(cache_uri, key)
        if self.calibration is None:
            self.calibration = self._calibrate(false_alarm_rate, calibration_windows, "pick-up time" if ordered else "row order")
            self._write_cache(cache_uri, key)

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        out = frame[self.columns].copy()
        for z in ZONE_COLUMNS:
            out[z] = out[z].where(out[z].isin(self.kept_zones[z]), OTHER_ZONE)
        return out.to_numpy(dtype=np.float64)

    def _calibrate(self, false_alarm_rate: float, n_windows: int, ordered_by: str) -> Calibration:
        n, size = len(self.reference), self.window_size
        starts = np.unique(np.linspace(0, n - size, n_windows).astype(int))
        log.info("calibrating drift thresholds on %d contiguous windows of %d rides (%s)", len(starts), size, ordered_by)
        encoded = self.encode(self.reference)
        rng = np.random.default_rng(0)
        zone_codes = np.unique(encoded[:, self.columns.index(ZONE_COLUMNS[0])])
        shifts = {"longer_trips": self._longer_trips, "moved_zones": lambda w: self._moved_zones(w, zone_codes, rng)}
        p_values, flagged = [], {name: [] for name in shifts}
        for start in starts:
            window = encoded[start : start + size]
            rest = ColumnTests(np.concatenate([encoded[:start], encoded[start + size :]]), self.columns)
            p_values.append(rest.p_values(window))
            for name, shift in shifts.items():
                flagged[name].append(rest.p_values(shift(window)))
        p_values = np.array(p_values)
        quantile = false_alarm_rate / len(self.columns)
        # A quantile this small rests on the few smallest p-values; where windows vary no more than random samples
        # (the i.i.d. case) the test's own p-value is right, so never go above that either.
        thresholds = {c: min(quantile, float(np.quantile(p_values[:, i], quantile))) for i, c in enumerate(self.columns)}
        limits = np.array([thresholds[c] for c in self.columns])
        power = {name: float(np.mean([(p < limits).any() for p in ps])) for name, ps in flagged.items()}
        return Calibration(thresholds, size, len(starts), ordered_by, power)

    def _longer_trips(self, window: np.ndarray) -> np.ndarray:
        shifted = window.copy()
        shifted[:, self.columns.index("trip_distance")] *= 1 + LONGER_TRIPS
        return shifted

    def _moved_zones(self, window: np.ndarray, zone_codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        shifted = window.copy()
        moved = rng.random(len(window)) < MOVED_ZONES
        shifted[moved, self.columns.index(ZONE_COLUMNS[0])] = rng.choice(zone_codes, moved.sum())
        return shifted

    def _read_cache(self, cache_uri: str | None, key: str) -> Calibration | None:
        if not cache_uri:
            return None
        try:
            return Calibration(**json.loads(store.read_bytes(store.join(cache_uri, f"{key}.json"))))
        except Exception:  # absent or unreadable: calibrate again
            return None

    def _write_cache(self, cache_uri: str | None, key: str) -> None:
        if not cache_uri:
            return
        try:
            body = json.dumps(asdict(self.calibration)).encode()
            store.write_bytes(store.join(cache_uri, f"{key}.json"), body)
        except Exception as e:  # a cache that cannot be written costs time next run, nothing else
            log.warning("could not cache the calibration at %s: %s", cache_uri, e)

    def test(self, current: pd.DataFrame) -> list[ColumnResult]:
        p = self.tests.p_values(self.encode(judged(current, self.window_size)))
        limits = self.calibration.thresholds
        return [
            ColumnResult(c, test_name(c), float(p[i]), limits[c], bool(p[i] < limits[c])) for i, c in enumerate(self.columns)
        ]


# -- the report ----------------------------------------------------------------------------------------------------


def _register_evidently_tests(window_size: int) -> None:
    """Evidently tests that are the job's tests: same rides, same statistic, same p-value, verdict at the calibrated
    threshold. The score evidently shows is -log10(p); the threshold, -log10 of the calibrated one.
    """
    from evidently.legacy.calculations.stattests.registry import StatTest, register_stattest
    from evidently.legacy.core import ColumnType

    def make(column_type):
        def score(reference: pd.Series, current: pd.Series, _type, threshold: float):
            current = judged(current, window_size)
            columns = ["PULocationID"] if column_type == ColumnType.Categorical else ["trip_distance"]
            p = ColumnTests(reference.to_numpy(np.float64).reshape(-1, 1), columns).p_values(
                current.to_numpy(np.float64).reshape(-1, 1)
            )[0]
            minus_log_p = -math.log10(p) if p > 0 else math.inf
            return minus_log_p, minus_log_p > threshold

        return score

    for name, display, column_type in (
        ("calibrated_chi2", "chi-squared (-log10 p), calibrated threshold", ColumnType.Categorical),
        ("calibrated_ks", "Kolmogorov-Smirnov (-log10 p), calibrated threshold", ColumnType.Numerical),
    ):
        register_stattest(StatTest(name, display, [column_type], default_threshold=0.0), default_impl=make(column_type))


def evidently_report(reference: pd.DataFrame, current: pd.DataFrame, drift_test: DriftTest,
                     actual: pd.Series | None = None, live_error: dict | None = None):  # fmt: skip
    """The HTML/JSON report: the decision's data, tests and thresholds, so it can only say what the job says.

    With actuals, also the live error: RMSE and MAE on the rides whose actual duration was 1-60 min (the rest
    have no target), next to the reference's, with a test at the degradation limit when the job judged it.
    """
    from evidently import DataDefinition, Dataset, Regression, Report
    from evidently.metrics import MAE, RMSE, DriftedColumnsCount, ValueDrift
    from evidently.tests import lte

    _register_evidently_tests(drift_test.window_size)
    columns = drift_test.columns
    methods = {c: "calibrated_chi2" if c in ZONE_COLUMNS else "calibrated_ks" for c in columns}
    thresholds = {c: -math.log10(t) if t > 0 else math.inf for c, t in drift_test.calibration.thresholds.items()}
    encode = lambda frame: pd.DataFrame(drift_test.encode(frame), columns=columns)  # noqa: E731
    ref, cur = encode(reference), encode(current)
    # Explicit metrics and no default tests (include_tests adds checks that fail on normal runs). One drifted column
    # is drift, as in the decision: hence the tiny drift_share.
    metrics = [ValueDrift(column=c, method=methods[c], threshold=thresholds[c]) for c in columns]
    metrics.append(DriftedColumnsCount(columns=columns, per_column_method=methods, per_column_threshold=thresholds,
                                       drift_share=1e-9))  # fmt: skip
    regression = []
    if actual is not None and live_error and live_error.get("rmse") is not None:
        ref[TARGET] = reference[TARGET].where(reference[TARGET].between(MIN_DURATION, MAX_DURATION)).to_numpy() \
            if TARGET in reference else np.nan  # fmt: skip
        cur[TARGET] = actual.to_numpy()
        regression = [Regression(target=TARGET, prediction=PREDICTION)]
        limit = live_error["max_rmse_ratio"] * live_error["validation_rmse"] if live_error["degraded"] is not None else None
        metrics += [RMSE(tests=[lte(limit)] if limit else None), MAE()]
    definition = DataDefinition(
        numerical_columns=[c for c in cur.columns if c not in ZONE_COLUMNS],
        categorical_columns=[c for c in columns if c in ZONE_COLUMNS],
        regression=regression or None,
    )
    return Report(metrics).run(
        Dataset.from_pandas(cur, data_definition=definition), Dataset.from_pandas(ref, data_definition=definition)
    )


def report_verdicts(snapshot) -> dict[str, bool]:
    """What the report says: per column, -log10 p above its threshold means drifted; and a failed RMSE test means
    the live error is degraded."""
    report = snapshot.dict()
    out = {}
    for metric in report["metrics"]:
        config = metric.get("config", {})
        if config.get("type", "").endswith("ValueDrift"):
            out[config["column"]] = float(metric["value"]) > float(config["threshold"])
    for test in report.get("tests") or []:
        if test["metric_config"]["params"]["type"].endswith("RMSE"):
            out["live_error_degraded"] = test["status"] == "FAIL"
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


def as_dict(results: list[ColumnResult]) -> dict:
    return {r.column: {k: v for k, v in asdict(r).items() if k != "column"} for r in results}
