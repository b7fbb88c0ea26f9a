"""A command's settings in one place: each a dataclass field with its flag, environment variable and default.

`add_arguments` puts them on an argparse parser with help text generated from them ("… (env VAR; default: X)"),
the environment giving the default a flag overrides; `read` turns parsed arguments back into the dataclass.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import MISSING, Field, field, fields
from datetime import datetime, timedelta, timezone


def setting(help: str, default=None, *, env: str | None = None, flag: str | None = None, aliases: tuple[str, ...] = (),
            type=None, required: bool = False, **argparse_options) -> Field:  # fmt: skip
    """A dataclass field that is also a command-line flag (`--field-name` unless `flag`), read from `env` if set."""
    metadata = {"help": help, "env": env, "flag": flag, "aliases": aliases, "type": type, "required": required,
                "argparse": argparse_options}  # fmt: skip
    return field(default=default, metadata={"setting": metadata})


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls, underscores: bool = False) -> None:
    """`--field-name` flags, or `--field_name` next to a parser that spells its own that way (kserve's)."""
    for f in fields(cls):
        meta = f.metadata.get("setting")
        if meta is None:
            continue
        flag = meta["flag"] or "--" + (f.name if underscores else f.name.replace("_", "-"))
        env, default = meta["env"], f.default if f.default is not MISSING else None
        if env and os.environ.get(env):
            # A string: argparse converts it with `type`, as it would the flag's value (untyped, it is used as it is).
            default = FromEnv(env, os.environ[env]) if meta["type"] is not None else os.environ[env]
        shown = ("none" if f.default is None or f.default is MISSING else "on" if f.default is True
                 else "off" if f.default is False else f.default)  # fmt: skip
        where = f"env {env}; " if env else ""
        options = dict(meta["argparse"])
        if meta["type"] is not None:
            options["type"] = _naming_env(meta["type"])
        parser.add_argument(flag, *meta["aliases"], dest=f.name, default=default, required=meta["required"] and default is None,
                            help=f"{meta['help']} ({where}default: {shown})", **options)  # fmt: skip


class FromEnv(str):
    """A setting's value as its environment variable gave it: a refusal then names the variable, not the flag."""

    def __new__(cls, env: str, value: str):
        text = super().__new__(cls, value)
        text.env = env
        return text


def _naming_env(kind):
    def parse(text: str):
        try:
            return kind(str(text))
        except (argparse.ArgumentTypeError, ValueError) as e:
            if isinstance(text, FromEnv):
                raise argparse.ArgumentTypeError(f"{text.env}={text}: {e}") from None
            raise

    parse.__name__ = getattr(kind, "__name__", "value")
    return parse


class ShowDefaults(argparse.HelpFormatter):
    """Every flag's help ends with its default: ours say it already (with the env var), others' get it added."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default:" in text or action.default in (None, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def read(cls, args: argparse.Namespace):
    """The dataclass, from parsed arguments (fields that are not settings keep their defaults)."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if "setting" in f.metadata and hasattr(args, f.name)})


def duration(text: str) -> timedelta:
    """`30m`, `24h`, `7d`."""
    m = re.fullmatch(r"(\d+)([mhd])", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: use minutes, hours or days, e.g. 30m, 24h, 7d")
    return timedelta(**{{"m": "minutes", "h": "hours", "d": "days"}[m[2]]: int(m[1])})


def timestamp(text: str) -> datetime:
    """ISO-8601; UTC when no zone is given."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use ISO-8601, e.g. 2026-11-28T06:00:00Z") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def positive(kind, zero: bool = False):
    """An argparse type: a finite number of `kind` greater than zero (or equal to it, with `zero`)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from None
        if not -float("inf") < value < float("inf"):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if value < 0 or (value == 0 and not zero):
            raise argparse.ArgumentTypeError(f"must be {'zero or more' if zero else 'positive'}, got {text}")
        return value

    parse.__name__ = f"{'non-negative' if zero else 'positive'} {kind.__name__}"
    return parse
