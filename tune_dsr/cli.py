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


def add_probe_flags(parser: argparse.ArgumentParser, *, held_out_recognisers: bool) -> None:
    """The flags `evaluate` and `compare` share: the probes, the DSRs, the recogniser(s), the
    threshold and where and how to run."""
    parser.add_argument("--dataset-root", required=True,
                        help="the probes: a split folder with hr_images/ and vlr_images*/ (e.g. "
                             "DATA/test_processed), or a data root that holds test_processed/")
    parser.add_argument("--dsr", action="extend", nargs="+", required=True, metavar="PATH",
                        help="DSR checkpoint: best.pt, last.pt, or a Tune trial checkpoint "
                             "folder (or its state.pt); several give several methods (EMA "
                             "weights where present)")
    if held_out_recognisers:
        parser.add_argument("--edgeface", action="extend", nargs="+", required=True,
                            metavar="PATH",
                            help="EdgeFace checkpoint (or random:<variant>); the first is the one "
                                 "DSR was trained against, further ones are held-out recognisers")
    else:
        parser.add_argument("--edgeface", required=True, metavar="PATH",
                            help="EdgeFace checkpoint (or random:<variant>) that identifies the "
                                 "faces")
    parser.add_argument("--threshold", type=float, default=0.35,
                        help="cosine similarity below which the answer is 'unknown', in [-1, 1] "
                             "(default: the guide's 0.35)")
    parser.add_argument("--device", default="auto",
                        help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="probes per batch (default 32)")
    parser.add_argument("--max-images", type=int, default=0,
                        help="use at most N probes, evenly spaced over the names (0: all)")


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
