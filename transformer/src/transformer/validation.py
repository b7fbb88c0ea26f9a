"""A request body → what to score: one ride (any problem is the request's 400), or a batch (one result per instance)."""

from __future__ import annotations

from dataclasses import dataclass

from ride import Ride, RideError, parse_ride
from ride.rules import usable_ride_id


class RequestError(ValueError):
    """The body itself cannot be used; the message is safe to return as the 400 body. `reason` labels /metrics."""

    def __init__(self, message: str, reason: str = "body"):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Rejected:
    """An instance of a batch that cannot be scored: answered with its error, neither scored nor logged."""

    ride_id: str | None  # echoed when the instance had a usable one
    error: RideError


def parse_request(body, max_batch: int) -> tuple[list[Ride | Rejected], bool]:
    """Rides (or rejections, in a batch) and whether the request was a batch: `{"ride_id", "ride"}` or `{"instances": [...]}`."""
    if not isinstance(body, dict):
        raise RequestError('body: must be a JSON object: {"ride_id": …, "ride": {…}} or {"instances": [...]}')
    if "instances" not in body:
        try:
            return [parse_ride(body)], False
        except RideError as e:
            raise RequestError(str(e), e.reason) from None
    if "ride_id" in body or "ride" in body:
        raise RequestError('body: either {"ride_id", "ride"} or {"instances": [...]}, not both')
    instances = body["instances"]
    if not isinstance(instances, list):
        raise RequestError("instances: must be a list of {ride_id, ride} objects", "instances")
    if not instances:
        raise RequestError("instances: empty batch", "instances")
    if len(instances) > max_batch:
        raise RequestError(f"instances: {len(instances)} rides, more than the maximum of {max_batch}", "instances")
    return [_parse_instance(item) for item in instances], True


def _parse_instance(item) -> Ride | Rejected:
    try:
        return parse_ride(item)
    except RideError as e:
        return Rejected(usable_ride_id(item), e)
