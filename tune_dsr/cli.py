"""What every tune_dsr command line shares: one flag vocabulary, logging set-up, output checks
and the one "bad input" exit path.

A flag is its setting's name with dashes (``--max-images`` sets ``max_images``) on every command
that has it; the library's errors name settings (``max_images=-1``) and `run_cli` shows them as
the flags the user typed (``--max-images=-1``).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from tune_dsr.config import GUIDE_THRESHOLD
from tune_dsr.errors import USER_ERRORS, ConfigError, check_writable_dir, check_writable_file

__all__ = [
    "add_data_flags",
    "add_debug_flag",
    "add_demo_flag",
    "add_device_flag",
    "add_max_images_flag",
    "add_probe_flags",
    "add_seed_flag",
    "add_set_flag",
    "check_at_least",
    "check_writable_dir",
    "check_writable_file",
    "parse_settings",
    "run_cli",
    "show_progress",
]


def setup_logging(debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


# ----------------------------------------------------------------------------- the vocabulary

def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks and debug logging")


def add_demo_flag(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--demo", action="store_true", help=what)


def add_seed_flag(parser: argparse.ArgumentParser, what: str, default: int | None) -> None:
    shown = f" (default {default})" if default is not None else ""
    parser.add_argument("--seed", type=int, default=default, help=f"{what}{shown}")


def add_data_flags(parser: argparse.ArgumentParser, *splits: str) -> None:
    """``--data-root`` (a root holding ``<split>_processed/`` for each of `splits`) or one
    ``--<split>-dir`` per split (a split folder: ``hr_images/`` and ``vlr_images*/``)."""
    folders = " and ".join(f"{split}_processed/" for split in splits)
    parser.add_argument("--data-root", metavar="DATA", help=f"a data root that holds {folders}")
    for split in splits:
        parser.add_argument(f"--{split}-dir", metavar="DIR",
                            help=f"the {split} split folder, with hr_images/ and vlr_images*/ "
                                 "(instead of --data-root)")


def add_max_images_flag(parser: argparse.ArgumentParser, what: str = "pairs per split") -> None:
    parser.add_argument("--max-images", type=int, default=None,
                        help=f"use at most N {what}, evenly spaced over the names (default: all)")


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto)")


def add_probe_flags(parser: argparse.ArgumentParser, *, held_out_recognisers: bool) -> None:
    """The flags `evaluate` and `compare` share: the probes, the DSRs, the recogniser(s), the
    threshold and where and how to run."""
    add_data_flags(parser, "test")
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
    parser.add_argument("--threshold", type=float, default=GUIDE_THRESHOLD,
                        help="cosine similarity below which the answer is 'unknown', in [-1, 1] "
                             f"(default: the guide's {GUIDE_THRESHOLD:g})")
    add_device_flag(parser)
    parser.add_argument("--batch-size", type=int, default=32,
                        help="probes per batch (default 32)")
    add_max_images_flag(parser, "probes")


def check_at_least(args: argparse.Namespace, **lowest: int) -> None:
    """Refuse integer flags below their lowest allowed value (``batch_size=1``...)."""
    for name, low in lowest.items():
        value = getattr(args, name)
        if value is not None and value < low:
            raise ConfigError(f"{name}={value} is too small: it must be at least {low}")


def show_progress(epoch: int, batch: int, num_batches: int, loss: Any) -> None:
    """One epoch's progress bar on stderr, rewritten in place, cleared at the last batch;
    `loss` is read (``float``) only here, since reading waits for the device."""
    done = int(30 * batch / num_batches)
    print(f"\rEpoch {epoch:03d} [{'#' * done}{'.' * (30 - done)}] {batch}/{num_batches} "
          f"loss={float(loss):.4f}", end="", file=sys.stderr, flush=True)
    if batch == num_batches:
        print("\r" + " " * 79 + "\r", end="", file=sys.stderr, flush=True)


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


# ----------------------------------------------------------------------------- running

def _as_flags(message: str, parser: argparse.ArgumentParser) -> str:
    """The library names settings (``max_images=-1``); show them as this command's flags."""
    for action in parser._actions:  # argparse's public API lists no actions
        long = next((s for s in action.option_strings if s.startswith("--")), None)
        if long and action.dest not in ("help", "debug"):
            # Only a name that starts the message or follows a space or a bracket: never one
            # inside a path or a folder name (".../seed=1/", Ray's "batch_size=16,lr=...").
            message = re.sub(rf"(?:^|(?<=[\s(])){re.escape(action.dest)}=", f"{long}=", message)
    return message


def run_cli(parser: argparse.ArgumentParser, body: Callable[[argparse.Namespace], int],
            argv: Sequence[str] | None = None) -> int:
    """Parse, set up logging, run `body`; bad input prints one paragraph and exits 2."""
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
        print(f"{parser.prog}: error: {_as_flags(str(exc), parser)}", file=sys.stderr)
        print(f"(run `{parser.prog} --help` for usage, or add --debug for the traceback)",
              file=sys.stderr)
        return 2
    except Exception as exc:
        if args.debug:
            raise
        print(f"{parser.prog}: failed: {type(exc).__name__}: {exc}\n(add --debug for the "
              "traceback)", file=sys.stderr)
        return 1
