"""What every tune_dsr command line shares: logging set-up and the "bad input" exit path."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from tune_dsr.errors import USER_ERRORS, ConfigError


def setup_logging(debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks and debug logging")


def add_set_flag(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"{what} (JSON value, e.g. --set width=64 --set "
                             "perceptual_layers='{\"relu1_2\": 1}'); repeatable")


def parse_settings(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` items as settings; a value that is not JSON is taken as a string."""
    settings = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: write KEY=VALUE, e.g. --set width=64")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw  # a bare string, e.g. --set device=cuda
        settings[key.strip()] = value
    return settings


def run_cli(parser: argparse.ArgumentParser, body: Callable[[argparse.Namespace], int],
            argv: Sequence[str] | None = None) -> int:
    """Parse, set up logging, run `body`; bad input prints one paragraph and exits non-zero."""
    args = parser.parse_args(argv)
    setup_logging(args.debug)
    try:
        return body(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        if args.debug:
            raise
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        print(f"(run `{parser.prog} --help` for usage, or add --debug for the traceback)",
              file=sys.stderr)
        return 2
    except Exception as exc:
        if args.debug:
            raise
        print(f"{parser.prog}: failed: {type(exc).__name__}: {exc}\n(add --debug for the "
              "traceback)", file=sys.stderr)
        return 1
