"""Command-line pieces every service shares: ``validate-config`` and settings loading."""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO, TypeVar

from pydantic import SecretStr, ValidationError

from plumbing.errors import ConfigError, EdgewatchError
from plumbing.lifecycle import Service, run_until_stopped, settle_runtime
from plumbing.logsetup import configure_logging
from plumbing.settings import ServiceSettings

_HIDDEN_WORDS = ("password", "secret", "token")
S = TypeVar("S", bound=ServiceSettings)


def _is_secret_path(loc: Iterable[Any]) -> bool:
    return any(isinstance(part, str) and any(w in part for w in _HIDDEN_WORDS) for part in loc)


def format_validation_error(error: ValidationError) -> list[str]:
    """One line per problem: dotted field path, the value given, and what is wrong."""
    lines = []
    for item in error.errors():
        loc = item["loc"]
        path = ".".join(str(part) for part in loc) or "(top level)"
        value = item.get("input")
        shown = "<hidden>" if _is_secret_path(loc) or isinstance(value, SecretStr) else repr(value)
        if len(shown) > 120:
            shown = shown[:117] + "..."
        lines.append(f"{path}: {item['msg']} (got {shown})")
    return lines


def load_or_explain(settings_cls: type[S], config_file: Path | None) -> tuple[S | None, list[str]]:
    """Load settings, or return the list of readable problems."""
    try:
        return settings_cls.load(config_file), []
    except ValidationError as exc:
        return None, format_validation_error(exc)
    except tomllib.TOMLDecodeError as exc:
        return None, [f"{config_file}: not valid TOML: {exc}"]
    except (ConfigError, OSError) as exc:
        return None, [str(exc)]


def missing_files(settings: ServiceSettings) -> list[str]:
    """One line per file the settings name that does not exist or this user cannot read."""
    problems = []
    for field, path in settings.input_files().items():
        if not path.exists():
            problems.append(f"{field}: {path} does not exist")
        elif not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
            problems.append(f"{field}: {path} is not readable by this user (uid {os.getuid()})")
    return problems


def validate_config(
    settings_cls: type[ServiceSettings], config_file: Path, out: TextIO | None = None
) -> int:
    """Print every problem and return 1, or a short summary and return 0."""
    out = out or sys.stdout
    settings, problems = load_or_explain(settings_cls, config_file)
    if settings is not None:
        problems = missing_files(settings)
    if settings is None or problems:
        print(f"{config_file}: {len(problems)} problem(s)", file=out)
        for line in problems:
            print(f"  {line}", file=out)
        return 1
    print(f"{config_file}: valid {settings_cls.service_name} configuration", file=out)
    for line in settings.summary():
        print(f"  {line}", file=out)
    return 0


def add_config_commands(subparsers: Any) -> None:
    """Add ``validate-config FILE`` to a service's argument parser."""
    check = subparsers.add_parser("validate-config", help="check a configuration file and exit")
    check.add_argument("config", type=Path, help="TOML configuration file")


def require_settings(settings_cls: type[S], config_file: Path | None) -> S:
    """Load settings for a run, or print the problems and exit with status 1."""
    settings, problems = load_or_explain(settings_cls, config_file)
    if settings is None:
        for line in problems:
            print(f"config error: {line}", file=sys.stderr)
        raise SystemExit(1)
    return settings


def run_service(
    settings_cls: type[S], config_file: Path | None, build: Callable[[S], Service]
) -> int:
    """``run``: load the settings, set up logging, build the service, run it until stopped."""
    settings = require_settings(settings_cls, config_file)
    configure_logging(settings.log_level)
    service = build(settings)
    settle_runtime()
    return run_until_stopped(service)


def base_parser(prog: str, description: str) -> tuple[argparse.ArgumentParser, Any]:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_config_commands(subparsers)
    return parser, subparsers


def dispatch(args: argparse.Namespace, settings_cls: type[ServiceSettings]) -> int:
    """Run the chosen subcommand; an EdgewatchError becomes one line on stderr and exit 1."""
    if args.command == "validate-config":
        return validate_config(settings_cls, args.config)
    try:
        return int(args.handler(args))
    except EdgewatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
