"""What each `python -m training` command does, and how a failure ends: one line, and the shared exit status."""

from __future__ import annotations

from datetime import datetime, timezone

from ride import startup


def train(settings) -> dict:
    from training.train import run

    months, production = settings.train_data or settings.val_data, settings.production_rides or settings.actuals
    if months and production:
        raise ValueError("train either on months (--train-data, --val-data) or on production rides "
                         "(--production-rides, --actuals), not both")  # fmt: skip
    if production and not (settings.production_rides and settings.actuals):
        raise ValueError("production rides need both --production-rides and --actuals")
    if not production and not (settings.train_data and settings.val_data):
        raise ValueError("give --train-data and --val-data, or --production-rides and --actuals")
    if not 0 < settings.validation_share < 1:
        raise ValueError(f"--validation-share must be between 0 and 1, got {settings.validation_share}")
    settings.until = settings.until or datetime.now(timezone.utc)
    settings.since = settings.since or settings.until - settings.window
    return run(settings)


def storage_uri(settings) -> dict:
    from training.registry import client, resolve_alias

    return resolve_alias(client(settings.tracking_uri), settings.model_name, settings.alias, settings.artifacts_destination)


def rollback(settings) -> dict:
    from training.registry import client, rollback

    return rollback(client(settings.tracking_uri), settings.model_name, settings.alias, settings.artifacts_destination)


def render_isvc(settings) -> None:
    import yaml

    from training.isvc import rendered

    print(yaml.safe_dump(rendered(settings), sort_keys=False), end="")


def deploy(settings) -> dict:
    from training.isvc import deploy

    return deploy(settings)


def guarded(command: str, settings) -> dict | None:
    from mlflow.exceptions import MlflowException

    from training.data import DataError
    from training.isvc import DeployError
    from training.registry import RegistryError

    try:
        return {"train": train, "storage-uri": storage_uri, "rollback": rollback, "render-isvc": render_isvc,
                "deploy": deploy}[command](settings)  # fmt: skip
    except RegistryError as e:  # an answer: the registry does not hold what was asked
        startup.fail(str(e), startup.EXIT_FINDING)
    except (DataError, DeployError, ValueError, TimeoutError) as e:
        startup.fail(str(e))
    except MlflowException as e:
        startup.fail(f"MLflow ({settings.tracking_uri or 'default tracking URI'}): {e.message.splitlines()[0]}")
    except Exception as e:  # anything unforeseen: one line too
        startup.fail(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
