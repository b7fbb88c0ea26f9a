"""The model registry side: the fair gate on the alias, rollback, and resolving an alias to an S3 directory."""

from __future__ import annotations

from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from ride import utc_timestamp
from ride.registry import PREVIOUS, REJECTED_TAG


def client(tracking_uri: str | None) -> MlflowClient:
    if tracking_uri:
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
    return MlflowClient()


class RegistryError(Exception):
    """The registry does not hold what the user asked for."""


@dataclass
class Gate:
    promote: bool
    reason: str
    champion: str | None = None  # the version holding the alias when the challenger was judged
    champion_rmse: float | None = None  # that version re-scored on the challenger's validation rides


def current_alias(client: MlflowClient, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def fair_gate(client: MlflowClient, name: str, alias: str, rmse: float, x_val, y_val, margin: float) -> Gate:
    """Promote when the challenger's RMSE is at most (1 - margin) x the alias holder's on the *same* validation
    rides: the serving model is re-scored on them, so an easier month cannot promote a worse model."""
    import mlflow.sklearn

    from training.model import rmse as rmse_of

    current = current_alias(client, name, alias)
    if current is None:
        return Gate(True, f"no model holds @{alias} yet")
    try:
        champion = mlflow.sklearn.load_model(f"models:/{name}/{current.version}")
    except Exception as e:  # an error, not an answer: the gate cannot judge without it
        raise RuntimeError(f"cannot load @{alias} (version {current.version}) to re-score it: {e}") from None
    champion_rmse = rmse_of(y_val, champion.predict(x_val))
    limit = champion_rmse * (1 - margin)
    verdict = "<=" if rmse <= limit else ">"
    reason = (f"rmse {rmse:.3f} {verdict} {limit:.3f}: @{alias} (version {current.version}) scores {champion_rmse:.3f} "
              f"on the same {len(y_val)} validation rides, margin {margin:.0%}")  # fmt: skip
    return Gate(rmse <= limit, reason, str(current.version), champion_rmse)


def record_decision(client: MlflowClient, name: str, alias: str, version: str, run_id: str, gate: Gate) -> None:
    """Move the aliases (@previous keeps the replaced version) or start the retraining cool-down; log why."""
    client.set_tag(run_id, "gate.promoted", str(gate.promote).lower())
    client.set_tag(run_id, "gate.reason", gate.reason)
    if gate.champion_rmse is not None:
        client.log_metric(run_id, "champion_rmse", gate.champion_rmse)
        client.set_tag(run_id, "gate.champion_version", gate.champion)
    if gate.promote:
        if gate.champion is not None:
            client.set_registered_model_alias(name, PREVIOUS, gate.champion)
        client.set_registered_model_alias(name, alias, version)
    else:
        client.set_registered_model_tag(name, REJECTED_TAG, utc_timestamp())


def rollback(client: MlflowClient, name: str, alias: str, artifacts_destination: str | None = None) -> dict:
    """@alias back to @previous, and @previous to what @alias held: a second rollback returns to where it was."""
    current, previous = current_alias(client, name, alias), current_alias(client, name, PREVIOUS)
    if previous is None:
        raise RegistryError(f"registered model {name!r} has no @{PREVIOUS}: nothing to roll back to")
    client.set_registered_model_alias(name, alias, previous.version)
    if current is not None:
        client.set_registered_model_alias(name, PREVIOUS, current.version)
    return {
        "version": previous.version,
        "previous": current.version if current else None,
        "alias": alias,
        "storage_uri": storage_uri(client, name, previous.version, artifacts_destination),
    }


def to_storage_uri(download_uri: str, artifacts_destination: str | None) -> str:
    """Map a proxied `mlflow-artifacts:` URI onto the server's --artifacts-destination."""
    if not download_uri.startswith("mlflow-artifacts:"):
        return download_uri.rstrip("/")
    if not artifacts_destination:
        raise ValueError(
            f"{download_uri} is proxied by the tracking server: pass --artifacts-destination "
            "(the server's --artifacts-destination, e.g. s3://mlflow) to map it to S3"
        )
    path = download_uri.removeprefix("mlflow-artifacts:")
    if path.startswith("//"):  # mlflow-artifacts://host:port/path
        path = path[2:].split("/", 1)[1] if "/" in path[2:] else ""
    return f"{artifacts_destination.rstrip('/')}/{path.lstrip('/')}".rstrip("/")


def storage_uri(client: MlflowClient, name: str, version: str, artifacts_destination: str | None = None) -> str:
    return to_storage_uri(client.get_model_version_download_uri(name, version), artifacts_destination)


def resolve_alias(
    client: MlflowClient, name: str, alias: str, artifacts_destination: str | None = None
) -> dict:
    try:
        client.get_registered_model(name)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise RegistryError(f"registered model {name!r} does not exist") from None
        raise
    version = current_alias(client, name, alias)
    if version is None:
        raise RegistryError(f"registered model {name!r} has no alias @{alias}")
    return {
        "run_id": version.run_id,
        "version": version.version,
        "source": storage_uri(client, name, version.version, artifacts_destination),
    }
