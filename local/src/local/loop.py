"""`python -m local loop` (`make loop`): the loop closed on one machine, with the cluster's own commands.

An older model serves a newer month's rides, whose actual durations arrive as a dispatch system reports them;
the drift job judges the window and asks for retraining; a challenger trains on the logged rides and their
actuals, beats the serving model re-scored on the same rides, and is promoted; the predictor and transformer
move to it; its live error on the next rides is measured; a worse challenger is turned down by the same gate;
a rollback brings the old version back, the same rides measure it again, and a second rollback returns.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from local import traffic
from local.cli import ACTUALS_URI, LOG_URI, MODEL_NAME, Config, Progress, System, run_step
from local.processes import StepError


def loop(cfg: Config) -> dict:
    system = System(cfg)
    progress = Progress(12)
    phases = []
    try:
        system.start(progress)  # steps 1-5: S3, MLflow, the older model trained, @staging, served
        old = {"version": system.model["version"], "rmse": system.trained["rmse"]}
        rides = traffic.rides(cfg.traffic_month, 2 * cfg.traffic_rides)
        first, second = rides.iloc[: cfg.traffic_rides], rides.iloc[cfg.traffic_rides :]

        def serve(label: str, part, step: str) -> dict:
            """Replay `part` through what serves now, report the actuals, and judge that window."""
            since = datetime.now(timezone.utc)
            replayed = traffic.replay(system.transformer_url, part)
            traffic.write_actuals(ACTUALS_URI, part, system.s3.env_for("dispatcher"))
            system.wait_logged(since, len(replayed.scored))
            args = ["--since", since.isoformat(), "--calibration-cache", str(cfg.state / "calibration")]
            judged = system.drift(args, label.replace(" ", "-"))["json"]
            phase = {"phase": label, "since": since.isoformat(), "version": judged["model_version"], "rides": len(part),
                     "scored": len(replayed.scored),
                     **{k: judged[k] for k in ("drift", "degraded", "retrain")},
                     "live_rmse": (judged["performance"] or {}).get("rmse"),
                     "rmse_ratio": (judged["performance"] or {}).get("rmse_ratio")}  # fmt: skip
            phases.append(phase)
            progress(f"{step}: {phase['scored']:,} of {len(part):,} rides through version {phase['version']}: live RMSE "
                     f"{phase['live_rmse']:.2f} ({phase['rmse_ratio']:.2f}x validation), drift {yes(phase['drift'])}, "
                     f"live error degraded {yes(phase['degraded'])}")  # fmt: skip
            return phase

        before = serve("served by the older model", first, f"the first {len(first):,} rides of {cfg.traffic_month}")
        if not before["retrain"]["wanted"]:
            raise StepError(f"the drift job did not ask for retraining: {before['retrain']['reason']}")
        progress(f"the drift job asks for retraining: {before['retrain']['reason']}")

        challenger = system.train(["--production-rides", LOG_URI, "--actuals", ACTUALS_URI, "--since", before["since"]], "retrain")
        if not challenger["promoted"]:
            raise StepError(f"the challenger was not promoted: {challenger['reason']}")
        system.deploy()
        progress(f"challenger version {challenger['version']} trained on the logged rides and their actuals, promoted "
                 f"({challenger['reason']}); predictor and transformer serve it")  # fmt: skip

        after = serve("served by the challenger", second, f"the next {len(second):,} rides")

        worse = system.train(["--train-data", cfg.train_month, "--val-data", cfg.traffic_month], "worse-challenger")
        if worse["promoted"]:
            raise StepError(f"a challenger trained on {cfg.train_month} again was promoted: {worse['reason']}")
        progress(f"a challenger trained on {cfg.train_month} again (version {worse['version']}) is turned down: {worse['reason']}")

        rolled = run_step("training", ["rollback", "--model-name", MODEL_NAME], system.env("training"), cfg.logs / "rollback.log")["json"]
        system.deploy()
        again = serve("the same rides after a rollback", second, f"rolled back to version {rolled['version']}; the same rides")
        returned = run_step("training", ["rollback", "--model-name", MODEL_NAME], system.env("training"), cfg.logs / "rollback-2.log")["json"]
        system.deploy()
        progress(f"rolled back again: @staging is version {returned['version']}, @previous {returned['previous']}")

        summary = {
            "older_model": {**old, "train_month": cfg.train_month, "val_month": cfg.val_month},
            "traffic_month": cfg.traffic_month,
            "phases": phases,
            "challenger": challenger,
            "worse_challenger": worse,
            "rollback": rolled,
            "second_rollback": returned,
            "live_rmse_same_rides": {"challenger": after["live_rmse"], "older_model": again["live_rmse"]},
        }
        print_summary(summary)
        (cfg.state / "loop.json").write_text(json.dumps(summary, indent=2, default=str))
        return summary
    finally:
        system.stop()


def yes(flag) -> str:
    return "YES" if flag else "no"


def print_summary(s: dict) -> None:
    old, ch, worse = s["older_model"], s["challenger"], s["worse_challenger"]
    print()
    print("=" * 30 + " taxi-mlops loop " + "=" * 30)
    print(f"older model    version {old['version']}, trained on {old['train_month']}, RMSE {old['rmse']:.2f} on {old['val_month']}")
    for p in s["phases"]:
        print(f"{p['phase']:<34} version {p['version']}: {p['scored']:,} rides, live RMSE {p['live_rmse']:.2f} "
              f"({p['rmse_ratio']:.2f}x validation), drift {yes(p['drift'])}, degraded {yes(p['degraded'])}")  # fmt: skip
    print(f"retrain        {s['phases'][0]['retrain']['reason']}")
    print(f"challenger     version {ch['version']}: {ch['reason']}")
    print(f"worse one      version {worse['version']}: {worse['reason']}")
    same = s["live_rmse_same_rides"]
    print(f"same rides     live RMSE {same['challenger']:.2f} with the challenger, {same['older_model']:.2f} with the older model")
    print(f"rollback       twice: @staging {s['second_rollback']['version']}, @previous {s['second_rollback']['previous']}")
    print(json.dumps(s, default=str))
