"""`python -m training …`: train, storage-uri, rollback, render-isvc, deploy."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from datetime import datetime, timedelta, timezone

EXIT_ERROR = 1


def _add_registry_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI"),
        help="MLflow tracking server (default: $MLFLOW_TRACKING_URI)",
    )
    p.add_argument("--model-name", default="trip_duration", help="registered model name (default: %(default)s)")
    p.add_argument(
        "--artifacts-destination",
        default=os.environ.get("MLFLOW_ARTIFACTS_DESTINATION"),
        help="when the server proxies artifacts (mlflow-artifacts:/…): its --artifacts-destination, "
        "e.g. s3://mlflow, to map model URIs to S3 (default: $MLFLOW_ARTIFACTS_DESTINATION)",
    )


def duration(text: str) -> timedelta:
    m = re.fullmatch(r"(\d+)([mhd])", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: use minutes, hours or days, e.g. 30m, 24h, 7d")
    return timedelta(**{{"m": "minutes", "h": "hours", "d": "days"}[m[2]]: int(m[1])})


def timestamp(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use ISO-8601, e.g. 2026-11-28T06:00:00Z") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m training",
        description="Train the NYC green-taxi trip-duration model, track it in MLflow and register it.",
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train",
        help="train, log to MLflow, register and (through the quality gate) move the alias",
        description="Train on one month and validate on another (--train-data, --val-data), or on the rides the "
        "model served in a window, joined with their actual durations (--production-rides, --actuals): the older "
        "part trains, the newest part validates. Logs everything to MLflow, registers the model, and moves the "
        "alias when it passes the fair gate: the model holding the alias is re-scored on the same validation "
        "rides, and the new one must beat it by --gate-margin; @previous then keeps the version it replaced. "
        "The last stdout line is JSON: run_id, version, rmse, mae, promoted, reason, champion, champion_rmse, "
        "storage_uri.",
        epilog="SRC is a local path, an http(s) URL, an s3:// URI (parquet, csv or csv.gz), or a month "
        "YYYY-MM: $DATA_DIR/green_tripdata_YYYY-MM.parquet when present, else TLC's URL. Downloads "
        "are cached in $DATA_CACHE_DIR (default ~/.cache/taxi-mlops).",
    )
    months = train.add_argument_group("from TLC months")
    months.add_argument("--train-data", metavar="SRC", help="month to fit on")
    months.add_argument("--val-data", metavar="SRC", help="month to evaluate on (never fitted)")
    production = train.add_argument_group("from production rides")
    production.add_argument("--production-rides", metavar="PREFIX",
                            help="prediction logs (s3://predictions/logs or a directory): the rides served")  # fmt: skip
    production.add_argument("--actuals", metavar="PREFIX", help="their actual durations (s3://actuals/rides or a directory)")
    production.add_argument("--window", type=duration, default=timedelta(days=7), help="how far back from --until (default 7d)")
    production.add_argument("--since", type=timestamp, help="window start (ISO-8601, UTC); overrides --window")
    production.add_argument("--until", type=timestamp, help="window end (default: now)")
    production.add_argument("--validation-share", type=float, default=0.2,
                            help="the newest part of the window (by time) that validates (default 0.2)")  # fmt: skip
    train.add_argument("--experiment", default="nyc-taxi-experiment", help="(default: %(default)s)")
    train.add_argument("--alias", default="staging", help="alias moved on success (default: %(default)s)")
    train.add_argument(
        "--gate-margin",
        type=float,
        default=0.01,
        help="promote only when RMSE is at most (1 - margin) x the alias holder's on the same validation rides; "
        "negative lets a worse model through (default: %(default)s)",
    )
    _add_registry_args(train)

    uri = sub.add_parser(
        "storage-uri",
        help="resolve model@alias to the S3 directory holding its model file",
        description="Resolve a registry alias to JSON {run_id, version, source}; source is the directory "
        "that holds the model's one .pkl, as KServe's storageUri wants it. Exit 1 when the model or "
        "alias does not exist.",
    )
    uri.add_argument("--alias", "--stage-name", dest="alias", default="staging", help="(default: %(default)s)")
    _add_registry_args(uri)

    back = sub.add_parser(
        "rollback",
        help="point the alias back at @previous (and @previous at what it held)",
        description="Point model@alias at the version @previous holds, and @previous at the one the alias held, so "
        "that rolling back twice returns to where you were. The last stdout line is JSON: version, previous, "
        "alias, storage_uri. `deploy` then rolls the InferenceService to it.",
    )
    back.add_argument("--alias", default="staging", help="(default: %(default)s)")
    _add_registry_args(back)

    isvc_epilog = (
        "The rest comes from the environment the Job sets: ISVC_NAME (trip-duration), POD_NAMESPACE, "
        "TRANSFORMER_IMAGE, PREDICTOR_SERVICE_ACCOUNT (kserve-s3), TRANSFORMER_S3_SECRET (s3-transformer), "
        "S3_ENDPOINT_URL, PREDICTION_LOG_URI (s3://predictions/logs)."
    )
    render = sub.add_parser(
        "render-isvc",
        help="print the InferenceService YAML for a model version",
        description="Print the InferenceService for --storage-uri/--model-version, or for the version the "
        "alias points at when they are not given.",
        epilog=isvc_epilog,
    )
    render.add_argument("--storage-uri", help="the model's s3:// directory (default: resolved from the alias)")
    render.add_argument("--model-version", help="its registry version (with --storage-uri)")
    render.add_argument("--alias", default="staging", help="(default: %(default)s)")
    _add_registry_args(render)

    deploy = sub.add_parser(
        "deploy",
        help="resolve the alias, apply its InferenceService and wait until it has rolled out",
        description="Resolve model@alias to its S3 directory and version (or take --storage-uri/--model-version), "
        "render the InferenceService, server-side apply it with the kubernetes client (in-cluster credentials, "
        "else ~/.kube/config), then wait until its predictor and transformer Deployments run this render and "
        "it is Ready.",
        epilog=isvc_epilog,
    )
    deploy.add_argument("--storage-uri", help="the model's s3:// directory (default: resolved from the alias)")
    deploy.add_argument("--model-version", help="its registry version (with --storage-uri)")
    deploy.add_argument("--alias", default="staging", help="(default: %(default)s)")
    deploy.add_argument(
        "--timeout", type=float, default=600, help="seconds to wait for the rollout (default: %(default)s)"
    )
    deploy.add_argument(
        "--poll", type=float, default=5, help="seconds between looks at the rollout (default: %(default)s)"
    )
    _add_registry_args(deploy)
    return top


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_ERROR)


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    # MLflow's default retries keep a user waiting minutes for an unreachable server; ~30 s is enough.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "4")
    import pyarrow

    # pyarrow's multi-threaded CPU pool, once pandas has used it, aborts the interpreter at exit now and
    # then ("terminate called without an active exception", exit 134); one thread costs nothing here.
    pyarrow.set_cpu_count(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    for noisy in ("mlflow", "botocore", "urllib3", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from mlflow.exceptions import MlflowException

    from training.data import DataError
    from training.isvc import DeployError
    from training.registry import RegistryError

    try:
        if args.command == "train":
            from training.train import TrainSettings, run

            result = run(train_settings(args))
        elif args.command in ("storage-uri", "rollback"):
            import mlflow
            from mlflow import MlflowClient

            from training.registry import resolve_alias, rollback

            if args.tracking_uri:
                mlflow.set_tracking_uri(args.tracking_uri)
            act = resolve_alias if args.command == "storage-uri" else rollback
            result = act(MlflowClient(), args.model_name, args.alias, args.artifacts_destination)
        else:
            result = isvc_command(args)
            if result is None:
                return
    except (DataError, RegistryError, DeployError, ValueError, TimeoutError) as e:
        fail(str(e))
    except MlflowException as e:
        fail(f"MLflow ({args.tracking_uri or 'default tracking URI'}): {e.message.splitlines()[0]}")
    print(json.dumps(result))


def train_settings(args):
    from training.train import TrainSettings

    months, production = args.train_data or args.val_data, args.production_rides or args.actuals
    if months and production:
        raise ValueError("train either on months (--train-data, --val-data) or on production rides "
                         "(--production-rides, --actuals), not both")  # fmt: skip
    if production and not (args.production_rides and args.actuals):
        raise ValueError("production rides need both --production-rides and --actuals")
    if not production and not (args.train_data and args.val_data):
        raise ValueError("give --train-data and --val-data, or --production-rides and --actuals")
    if not 0 < args.validation_share < 1:
        raise ValueError(f"--validation-share must be between 0 and 1, got {args.validation_share}")
    until = args.until or datetime.now(timezone.utc)
    return TrainSettings(
        train_data=args.train_data,
        val_data=args.val_data,
        production_rides=args.production_rides,
        actuals=args.actuals,
        since=args.since or until - args.window,
        until=until,
        validation_share=args.validation_share,
        tracking_uri=args.tracking_uri,
        experiment=args.experiment,
        model_name=args.model_name,
        alias=args.alias,
        gate_margin=args.gate_margin,
        artifacts_destination=args.artifacts_destination,
    )


def isvc_command(args) -> dict | None:
    import yaml

    from training import isvc

    if args.storage_uri:
        if not args.model_version:
            raise ValueError("--storage-uri needs --model-version")
        storage_uri, version = args.storage_uri, args.model_version
    else:
        import mlflow
        from mlflow import MlflowClient

        from training.registry import resolve_alias

        if args.tracking_uri:
            mlflow.set_tracking_uri(args.tracking_uri)
        resolved = resolve_alias(MlflowClient(), args.model_name, args.alias, args.artifacts_destination)
        storage_uri, version = resolved["source"], resolved["version"]
    manifest = isvc.render(storage_uri, version)
    if args.command == "render-isvc":
        print(yaml.safe_dump(manifest, sort_keys=False), end="")
        return None
    logging.getLogger("training").info("applying InferenceService %s (version %s, %s)", manifest["metadata"]["name"], version, storage_uri)
    current = isvc.apply(manifest, timeout=args.timeout, poll=args.poll)
    return {"name": manifest["metadata"]["name"], "version": version, "storage_uri": storage_uri,
            "url": current.get("status", {}).get("url"), "ready": True}
