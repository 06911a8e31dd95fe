"""Which device a run uses and which mixed precision that device does well.

bf16 autocast runs where the hardware computes in bf16: CUDA devices that support it (else
float16 with loss scaling), and CPUs with AVX-512 BF16 or AMX, where oneDNN's bf16 convolutions
make VGG19's forward and backward about twice as fast. Elsewhere autocast would emulate bf16 and
be slower than float32, so it is off.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from tune_dsr.errors import ConfigError

__all__ = [
    "autocast_dtype",
    "cpu_supports_bf16",
    "resolve_device",
]



def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA if torch sees one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``, checked:
    ConfigError for anything else, and for CUDA where torch sees none."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device={name!r} is not a device: use auto, cpu, cuda or "
                          "cuda:N") from exc
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={name!r} is not supported: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} asks for CUDA, but torch sees no CUDA device here; "
                          "use device=cpu (or auto)")
    return device


@functools.cache
def cpu_supports_bf16() -> bool:
    """The CPU has native bf16 arithmetic (AVX-512 BF16 or AMX-BF16), read off /proc/cpuinfo."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: be safe, use float32
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """The autocast dtype for `device` with mixed precision switched on (`amp`), or None."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return None
