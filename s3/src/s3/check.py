"""`python -m s3 check`: each user's keys are accepted for what its policy grants, and refused what it does not."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from .documents import User

PROBE_KEY = "s3-check"  # never written: see `granted`
UNNAMED_BUCKET = "s3-check-unnamed"


@dataclass
class Probe:
    what: str  # e.g. "PutObject s3://predictions/s3-check"
    call: Callable  # (boto3 S3 client) -> None, raises ClientError
    accepted: tuple[str, ...] = ()  # error codes that still mean "authorized" (the request got past the policy)


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _allowed(policy: dict) -> list[tuple[str, str]]:
    """(action, resource) of each Allow statement, lower-cased actions (IAM compares them so)."""
    pairs = []
    for statement in _as_list(policy.get("Statement", [])):
        if isinstance(statement, dict) and statement.get("Effect") == "Allow":
            for action in _as_list(statement.get("Action", [])):
                pairs += [(str(action).lower(), str(r)) for r in _as_list(statement.get("Resource", []))]
    return pairs


def _bucket_and_key(resource: str) -> tuple[str, str | None] | None:
    """The bucket (no wildcard) and a key matching the resource's key pattern, of an `arn:aws:s3:::…` resource."""
    if not resource.startswith("arn:aws:s3:::"):
        return None
    bucket, _, pattern = resource.removeprefix("arn:aws:s3:::").partition("/")
    if not bucket or "*" in bucket or "?" in bucket:
        return None
    return bucket, (pattern.replace("*", PROBE_KEY).replace("?", "x") if pattern else None)


def granted(policy: dict) -> Probe | None:
    """A harmless request the policy allows: list a bucket, read a key that is not there, or a conditional write
    (If-Match on a key that is not there) that S3 turns down after authorizing it, so nothing is written."""
    for wanted in ("s3:listbucket", "s3:getobject", "s3:putobject"):
        for action, resource in _allowed(policy):
            target = _bucket_and_key(resource)
            if not fnmatchcase(wanted, action) or target is None:
                continue
            bucket, key = target
            if wanted == "s3:listbucket" and key is None:
                return Probe(f"ListBucket s3://{bucket}", lambda c, b=bucket: c.list_objects_v2(Bucket=b, MaxKeys=1))
            if wanted == "s3:getobject" and key:
                return Probe(f"GetObject s3://{bucket}/{key}",
                             lambda c, b=bucket, k=key: c.get_object(Bucket=b, Key=k)["Body"].close(),
                             ("NoSuchKey",))  # fmt: skip
            if wanted == "s3:putobject" and key:
                return Probe(f"PutObject s3://{bucket}/{key} (If-Match, writes nothing)",
                             lambda c, b=bucket, k=key: c.put_object(Bucket=b, Key=k, Body=b"", IfMatch='"0"'),
                             ("NoSuchKey", "PreconditionFailed"))  # fmt: skip
    return None


def refused(policy: dict | None, buckets: list[str]) -> list[Probe]:
    """A read in each of `buckets` that none of the policy's resources names (a bucket no one names, when none is)."""
    resources = [resource for _, resource in _allowed(policy)] if policy is not None else []
    probes = []
    for bucket in buckets or [UNNAMED_BUCKET]:
        names = (f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/{PROBE_KEY}")
        if not any(fnmatchcase(name, resource) for name in names for resource in resources):
            probes.append(Probe(f"s3://{bucket}/", lambda c, b=bucket: c.get_object(Bucket=b, Key=PROBE_KEY)))
    return probes


def _outcome(client, probe: Probe) -> str:
    """"allowed", or the error code S3 answered with."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        probe.call(client)
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "?")
        return "allowed" if code in probe.accepted else code
    except BotoCoreError as e:  # no answer, or one that is not S3's
        return str(e)
    return "allowed"


KEYS_REFUSED = ("InvalidAccessKeyId", "SignatureDoesNotMatch")


def check_user(session, url: str, user: User, buckets: list[str]) -> tuple[bool, str]:
    from botocore.config import Config

    client = session.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=user.access_key_id,
                            aws_secret_access_key=user.secret_access_key,
                            config=Config(s3={"addressing_style": "path"}, connect_timeout=5, read_timeout=15,
                                          retries={"max_attempts": 3}))  # fmt: skip
    head = f"{user.name} (key {user.access_key_id})"
    notes = []
    probe = granted(user.policy) if user.policy is not None else None
    if probe is not None:
        if (outcome := _outcome(client, probe)) != "allowed":
            why = {**dict.fromkeys(KEYS_REFUSED, "its keys refused"), "NoSuchBucket": "the bucket is missing"}.get(
                outcome, "its policy allows it")  # fmt: skip
            return False, f"{head}: FAIL, {probe.what}: {outcome} ({why})"
        notes.append(f"{probe.what} allowed")
    probes = refused(user.policy, buckets)
    for probe in probes:
        if (outcome := _outcome(client, probe)) != "AccessDenied":
            why = "its keys refused" if outcome in KEYS_REFUSED else "not refused"
            return False, f"{head}: FAIL, GetObject {probe.what}{PROBE_KEY}: {outcome} ({why}; expected AccessDenied)"
    # AccessDenied comes after the signature check: the keys were accepted even when nothing else was tried.
    notes.append(f"GetObject in {', '.join(p.what for p in probes)} refused (AccessDenied)" if probes
                 else "its policy names every bucket: nothing to refuse")  # fmt: skip
    return True, f"{head}: ok, " + ", ".join(notes)


def wait_for(url: str, timeout: float) -> str | None:
    """None once the server answers HTTP at all, else the last connection error after `timeout` seconds."""
    deadline, delay = time.monotonic() + timeout, 0.5
    while True:
        try:
            urllib.request.urlopen(f"{url.rstrip('/')}/minio/health/ready", timeout=5).close()
            return None
        except urllib.error.HTTPError:  # an answer, whatever it says
            return None
        except (urllib.error.URLError, OSError) as e:
            last = str(getattr(e, "reason", e))
        if time.monotonic() + delay > deadline:
            return last
        time.sleep(delay)
        delay = min(delay * 2, 5)


def check(url: str, users: list[User], timeout: float) -> int:
    if (error := wait_for(url, timeout)) is not None:
        print(f"S3 at {url} did not answer within {timeout:.0f} s: {error}", flush=True)
        return 1
    # The buckets other users' policies name, so a refusal is tested where data really is (the transformer and mlflow/).
    buckets = sorted({target[0] for user in users if user.policy is not None
                      for _, resource in _allowed(user.policy) if (target := _bucket_and_key(resource))})  # fmt: skip
    import boto3

    session, failed = boto3.session.Session(), 0  # one session: it loads S3's service model once for every client
    for user in users:
        passed, line = check_user(session, url, user, buckets)
        print(line, flush=True)
        failed += not passed
    return 1 if failed else 0
