"""Turning a request body into rides, or one error that names the field (and the instance index)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# The model's input columns, in the order the predictor receives them (training's FEATURES).
FEATURES = ("PULocationID", "DOLocationID", "trip_distance")
ZONE_MIN, ZONE_MAX = 1, 265
MAX_TRIP_DISTANCE = 500.0  # miles, as in training's filter
MAX_RIDE_ID_LENGTH = 128
# Written with explicit code points so that Python and JSON Schema (ECMA-262, openapi.yaml) agree on them.
RIDE_ID_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
RIDE_ID_VISIBLE = re.compile(r"[^\x00-\x20\x7f]")


class RequestError(ValueError):
    """The client sent something we cannot score; the message is safe to return as the 400 body."""


@dataclass(frozen=True)
class Ride:
    ride_id: str
    PULocationID: int
    DOLocationID: int
    trip_distance: float


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _ride_id(value, where: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # the workshop sent integer ids; they are logged as strings
    if not isinstance(value, str):
        raise RequestError(f"{where}ride_id: must be a string (or an integer), got {type(value).__name__}")
    if len(value) > MAX_RIDE_ID_LENGTH:
        raise RequestError(f"{where}ride_id: longer than {MAX_RIDE_ID_LENGTH} characters")
    if RIDE_ID_CONTROL.search(value):
        raise RequestError(f"{where}ride_id: must not contain control characters")
    if not RIDE_ID_VISIBLE.search(value):
        raise RequestError(f"{where}ride_id: must not be empty or only spaces")
    return value


def _zone(ride: dict, field: str, where: str) -> int:
    value = ride[field]
    if not _is_number(value) or (isinstance(value, float) and not value.is_integer()):
        raise RequestError(f"{where}ride.{field}: must be an integer zone id, got {value!r}")
    if not ZONE_MIN <= value <= ZONE_MAX:
        raise RequestError(f"{where}ride.{field}: must be a zone id {ZONE_MIN}-{ZONE_MAX}, got {value}")
    return int(value)


def _distance(ride: dict, where: str) -> float:
    value = ride["trip_distance"]
    if not _is_number(value) or not math.isfinite(value):
        raise RequestError(f"{where}ride.trip_distance: must be a finite number of miles, got {value!r}")
    if not 0 <= value <= MAX_TRIP_DISTANCE:
        raise RequestError(f"{where}ride.trip_distance: must be between 0 and {MAX_TRIP_DISTANCE:g} miles, got {value}")
    return float(value)


def parse_ride(item, where: str = "") -> Ride:
    if not isinstance(item, dict):
        raise RequestError(f"{where or 'body'}: must be an object with ride_id and ride")
    for key in ("ride_id", "ride"):
        if key not in item:
            raise RequestError(f"{where}{key}: missing")
    ride = item["ride"]
    if not isinstance(ride, dict):
        raise RequestError(f"{where}ride: must be an object with {', '.join(FEATURES)}")
    missing = [f for f in FEATURES if f not in ride]
    if missing:
        raise RequestError(f"{where}ride.{missing[0]}: missing")
    return Ride(
        ride_id=_ride_id(item["ride_id"], where),
        PULocationID=_zone(ride, "PULocationID", where),
        DOLocationID=_zone(ride, "DOLocationID", where),
        trip_distance=_distance(ride, where),
    )


def parse_request(body, max_batch: int) -> tuple[list[Ride], bool]:
    """Rides and whether the request was a batch: `{"ride_id", "ride"}` or `{"instances": [...]}`."""
    if not isinstance(body, dict):
        raise RequestError('body: must be a JSON object: {"ride_id": …, "ride": {…}} or {"instances": [...]}')
    if "instances" in body:
        if "ride_id" in body or "ride" in body:
            raise RequestError('body: either {"ride_id", "ride"} or {"instances": [...]}, not both')
        instances = body["instances"]
        if not isinstance(instances, list):
            raise RequestError("instances: must be a list of {ride_id, ride} objects")
        if not instances:
            raise RequestError("instances: empty batch")
        if len(instances) > max_batch:
            raise RequestError(f"instances: {len(instances)} rides, more than the maximum of {max_batch}")
        return [parse_ride(item, f"instances[{i}].") for i, item in enumerate(instances)], True
    return [parse_ride(body)], False
