"""The user-input errors: each means "what you gave is wrong", says where and how to fix it.

Every command line prints one of these as one paragraph and exits 2 (``tune_dsr.cli``). Beside
them: how an error names a long list (`listing`), and the checks that refuse an output path
before any work starts (`check_writable_file`, `check_writable_dir`). This module imports nothing
but the standard library, so a CLI can use it, and answer a bad flag, without waiting for torch
or Ray to import.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "USER_ERRORS",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "EdgeFaceError",
    "PerceptualWeightsError",
    "SynthError",
    "check_writable_dir",
    "check_writable_file",
    "listing",
]


class ConfigError(ValueError):
    """A config key, flag or value that cannot be used; the message says which and the fix."""


class DataError(ValueError):
    """Everything wrong with a split, found in one pass: the folder, one "- ..." line per problem
    and how to fix them. `problems` holds the problem lines without the leading "- "."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)

    def __reduce__(self) -> tuple[Any, ...]:
        # Ray ships exceptions between processes; keep `problems` through pickling.
        return (type(self), (str(self), self.problems))


class EdgeFaceError(ValueError):
    """An EdgeFace checkpoint or variant that cannot be used, with what is wrong and the fix."""


class PerceptualWeightsError(ValueError):
    """The perceptual loss's VGG19 weights cannot be had; the message says how to provide them."""


class CheckpointError(ValueError):
    """A DSR checkpoint that cannot be used: missing, unreadable, unsafe, or for other data."""


class SynthError(ValueError):
    """An argument `make_synthetic_dataset` cannot work with; the message names it and the rule."""


def listing(items: Sequence[str], limit: int = 10, sep: str = ", ") -> str:
    """The first `limit` items, then "and N more": how every error names a long list."""
    shown = sep.join(items[:limit])
    return shown + (f"{sep.rstrip()} and {len(items) - limit} more" if len(items) > limit else "")


def check_writable_file(path: str | Path, flag: str, suffix: str = ".json") -> Path:
    """Refuse, before any work, an output file that cannot be written: a folder, or a place
    where no file can be created. Creates nothing."""
    target = Path(path).expanduser().resolve()
    given = _given(flag, target)
    if target.is_dir():
        raise ConfigError(f"{given} is a folder; give a file name to write in it, "
                          f"e.g. {target / 'out'}{suffix}")
    folder = next((p for p in (target.parent, *target.parent.parents) if p.exists()), None)
    if folder is None or not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{given} cannot be written: {folder} is not a writable "
                          "folder; give a path under a folder you can write to")
    if target.exists() and not os.access(target, os.W_OK):
        raise ConfigError(f"{given} exists and is read-only; give another path")
    return target


def check_writable_dir(path: str | Path, flag: str) -> Path:
    """Refuse, before any work, an output folder that cannot be created or written to."""
    target = Path(path).expanduser().resolve()
    given = _given(flag, target)
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{given} is a file; give a folder to write into")
    folder = next((p for p in (target, *target.parents) if p.exists()), None)
    if folder is None or not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{given} cannot be written: {folder} is not a writable "
                          "folder; give a path under a folder you can write to")
    return target


def _given(name: str, target: Path) -> str:
    """How a message names the path: ``--out PATH`` for a flag, ``storage_path=PATH`` for a
    setting (which a command line shows as its own flag)."""
    return f"{name} {target}" if name.startswith("-") else f"{name}={target}"


# Errors that mean "the user's input is wrong": one paragraph and exit 2, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, DataError, EdgeFaceError, PerceptualWeightsError, CheckpointError, SynthError,
    FileNotFoundError)
