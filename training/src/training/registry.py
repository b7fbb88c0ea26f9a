"""The model registry side: the quality gate on the alias, and resolving the alias to an S3 directory."""

from __future__ import annotations

import os
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException


class RegistryError(Exception):
    """The registry does not hold what the user asked for."""


@dataclass
class Gate:
    promote: bool
    reason: str
    staging_version: str | None = None
    staging_rmse: float | None = None


def current_alias(client: MlflowClient, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def quality_gate(client: MlflowClient, name: str, alias: str, rmse: float, tolerance: float) -> Gate:
    """Promote unless the alias holds a model whose RMSE beats this one by more than `tolerance` (relative)."""
    current = current_alias(client, name, alias)
    if current is None:
        return Gate(True, f"no model holds @{alias} yet")
    staged = client.get_run(current.run_id).data.metrics.get("rmse")
    if staged is None:
        return Gate(True, f"@{alias} (version {current.version}) has no rmse metric", current.version)
    limit = staged * (1 + tolerance)
    if rmse <= limit:
        return Gate(
            True,
            f"rmse {rmse:.3f} <= {limit:.3f} (@{alias} version {current.version}: {staged:.3f}, tolerance {tolerance:.0%})",
            current.version,
            staged,
        )
    return Gate(
        False,
        f"rmse {rmse:.3f} > {limit:.3f} (@{alias} version {current.version}: {staged:.3f}, tolerance {tolerance:.0%})",
        current.version,
        staged,
    )


def to_storage_uri(download_uri: str, artifacts_destination: str | None) -> str:
    """Map a proxied `mlflow-artifacts:` URI onto the server's --artifacts-destination."""
    if not download_uri.startswith("mlflow-artifacts:"):
        return download_uri.rstrip("/")
    if not artifacts_destination:
        raise RegistryError(
            f"{download_uri} is proxied by the tracking server: pass --artifacts-destination "
            "(the server's --artifacts-destination, e.g. s3://mlflow) to map it to S3"
        )
    path = download_uri.removeprefix("mlflow-artifacts:")
    if path.startswith("//"):  # mlflow-artifacts://host:port/path
        path = path[2:].split("/", 1)[1] if "/" in path[2:] else ""
    return f"{artifacts_destination.rstrip('/')}/{path.lstrip('/')}".rstrip("/")


def storage_uri(
    client: MlflowClient, name: str, version: str, artifacts_destination: str | None = None
) -> str:
    download = client.get_model_version_download_uri(name, version)
    return to_storage_uri(download, artifacts_destination or os.environ.get("MLFLOW_ARTIFACTS_DESTINATION"))


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
