"""Writing a file all or nothing: the one atomic writer every output of tune_dsr goes through
(checkpoints, experiment files, the CSV report, picture grids)."""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "atomic_write_text"]


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call `write` on a binary file beside `path` under a temporary name, sync it to disk, then
    rename it over `path` (creating the folder). A crash leaves the old file or the new one,
    never half of one, and a failed write leaves no temporary file behind. The temporary name
    is unique per process and call, so two writers never share one. Returns the resolved path.
    """
    target = Path(path).expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        # 0o666 less the umask: the permissions a plain open() gives.
        with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())  # the bytes are on disk before the name points at them
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)  # gone already once renamed
    return target


def atomic_write_text(path: str | Path, write: Callable[[io.TextIOWrapper], object],
                      newline: str | None = None) -> Path:
    """`atomic_write` for text: `write` gets a UTF-8 text stream (``newline`` as `open` takes
    it; "" for the csv module)."""
    def binary(out: BinaryIO) -> None:
        text = io.TextIOWrapper(out, encoding="utf-8", newline=newline)  # type: ignore[arg-type]
        write(text)
        text.flush()
        text.detach()  # leave `out` open: atomic_write syncs and closes it

    return atomic_write(path, binary)
