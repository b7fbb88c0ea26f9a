"""The users the cluster's set-up Job makes: a policy document `USER.json` each, and keys in files as Secrets mount them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

KEY_FILES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


class InputError(Exception):
    """A document or option the caller gave is missing or unusable; the message names the file and says why."""


@dataclass(frozen=True)
class User:
    name: str
    access_key_id: str
    secret_access_key: str
    policy_path: Path | None = None
    policy_text: str | None = None  # as written, for moto's validator
    policy: dict | None = None


def read_policies(directory: Path) -> dict[str, tuple[Path, str, dict]]:
    """user -> (file, text, document) for every `USER.json` in `directory`."""
    if not directory.is_dir():
        raise InputError(f"{directory}: not a directory (the policy documents, one USER.json per user)")
    paths = sorted(directory.glob("*.json"))
    if not paths:
        raise InputError(f"{directory}: no policy documents in it (one USER.json per user)")
    policies = {}
    for path in paths:
        try:
            text = path.read_text()
        except OSError as e:
            raise InputError(f"{path}: cannot read it ({e.strerror})") from None
        try:
            document = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
        if not isinstance(document, dict) or not isinstance(document.get("Statement"), (list, dict)):
            raise InputError(f"{path}: not a policy document (a JSON object with a Statement)")
        policies[path.stem] = (path, text, document)
    return policies


def credential_users(directory: Path) -> list[str]:
    if not directory.is_dir():
        raise InputError(f"{directory}: not a directory (the credentials, USER/AWS_ACCESS_KEY_ID and "
                         "USER/AWS_SECRET_ACCESS_KEY per user)")  # fmt: skip
    # A mounted Secret or ConfigMap volume also holds `..data` and `..<timestamp>` entries: not users.
    return sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_keys(directory: Path, user: str) -> tuple[str, str]:
    values = []
    for name in KEY_FILES:
        path = directory / user / name
        try:
            value = path.read_text().strip()  # as `$(cat …)` would: a file written by hand ends with a newline
        except FileNotFoundError:
            raise InputError(f"{path}: missing (user {user} needs {' and '.join(KEY_FILES)} in {path.parent})") from None
        except OSError as e:
            raise InputError(f"{path}: cannot read it ({e.strerror})") from None
        if not value:
            raise InputError(f"{path}: empty")
        values.append(value)
    return values[0], values[1]


def read_users(credentials: Path, policies: Path | None = None) -> list[User]:
    """Every user with its keys, and its policy document when `policies` is given: then both must name the same users."""
    documents = read_policies(policies) if policies is not None else None
    names = credential_users(credentials)
    if documents is not None:
        if without_keys := sorted(documents.keys() - set(names)):
            name = without_keys[0]
            raise InputError(f"{credentials / name}: missing (user {name} has a policy, {documents[name][0]}, "
                             "but no credentials)")  # fmt: skip
        if without_policy := sorted(set(names) - documents.keys()):
            name = without_policy[0]
            raise InputError(f"{credentials / name}: user {name} has credentials but no policy "
                             f"{policies / (name + '.json')}")  # fmt: skip
    if not names:
        raise InputError(f"{credentials}: no users in it (a directory USER/ per user, with {' and '.join(KEY_FILES)})")
    users, owners = [], {}
    for name in names:
        key_id, secret = read_keys(credentials, name)
        if key_id in owners:
            raise InputError(f"{credentials / name / KEY_FILES[0]}: the same access key id as user {owners[key_id]}'s")
        owners[key_id] = name
        users.append(User(name, key_id, secret, *(documents[name] if documents is not None else ())))
    return users
