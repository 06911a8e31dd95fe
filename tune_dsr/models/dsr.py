"""DSR ("DSRColor"): the face super-resolution network that tune_dsr trains.

conv 3→C → N residual blocks → one pixel-shuffle stage per upscale factor → conv C→3 →
antialiased resize to the exact HR size, clamped to [0, 1]. Optionally the network predicts the
residual over a bicubic upscale of its input (a global skip that SR practice finds easier to train).
"""

from __future__ import annotations

import logging
import math
import pickletools
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tune_dsr.config import Config, ModelConfig
from tune_dsr.errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)


def upscale_factors(vlr_size: int, hr_size: int) -> list[int]:
    """Pixel-shuffle factors for one VLR→HR scale.

    An integer scale made of 2s and 3s is reached exactly (4 → [2, 2], 6 → [2, 3]); any other scale
    is overshot with ×2 stages and brought to size by an antialiased *down*-resize, which loses
    nothing the network made (32 → 112 is 3.5×: [2, 2] to 128 px, then resize to 112).
    """
    if hr_size % vlr_size == 0:
        rest, factors = hr_size // vlr_size, []
        for f in (2, 3):
            while rest % f == 0:
                factors.append(f)
                rest //= f
        if rest == 1:
            return sorted(factors)
    return [2] * max(1, math.ceil(math.log2(hr_size / vlr_size)))


class ResidualBlock(nn.Module):
    """3×3 conv → PReLU → 3×3 conv, add the input, PReLU."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.act1 = nn.PReLU(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.act2 = nn.PReLU(width)

    def forward(self, x: Tensor) -> Tensor:
        return self.act2(x + self.conv2(self.act1(self.conv1(x))))


class DSR(nn.Module):
    """Very-low-resolution face (vlr_size px) → HR face (hr_size px), RGB in [0, 1]."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.vlr_size is None:
            raise ValueError("DSR needs a VLR size; an unset vlr_size means 'read it off the "
                             "data', which the trainer does before it builds DSR")
        self.config = config
        width = config.width
        self.head = nn.Conv2d(3, width, 3, padding=1)
        self.body = nn.Sequential(*(ResidualBlock(width) for _ in range(config.depth)))
        stages: list[nn.Module] = []
        for factor in upscale_factors(int(config.vlr_size), config.hr_size):
            stages += [nn.Conv2d(width, width * factor**2, 3, padding=1),
                       nn.PixelShuffle(factor), nn.PReLU(width)]
        self.upsample = nn.Sequential(*stages)
        self.tail = nn.Conv2d(width, 3, 3, padding=1)
        if not config.bicubic_residual and self.tail.bias is not None:
            # Start at mid-grey: the output is clamped to [0, 1], and a clamp passes no gradient,
            # so a net whose first outputs sit around 0 would waste half its pixels' signal.
            nn.init.constant_(self.tail.bias, 0.5)

    def forward(self, vlr: Tensor) -> Tensor:
        size = self.config.hr_size
        out = self.tail(self.upsample(self.body(self.head(vlr))))
        if out.shape[-1] != size or out.shape[-2] != size:
            # In float32: antialiased resizing has no bf16 kernel on CPU, and it is cheap.
            out = F.interpolate(out.float(), size=(size, size), mode="bilinear", antialias=True,
                                align_corners=False)
        if self.config.bicubic_residual:
            out = out + F.interpolate(vlr.float(), size=(size, size), mode="bicubic",
                                      align_corners=False)
        return out.clamp(0.0, 1.0)


def save_dsr(path: str | Path, model: nn.Module, config: Config, metrics: dict[str, float],
             epoch: int) -> None:
    """The deliverable: (EMA) weights, the config as a plain dict and the metrics that chose it."""
    torch.save({"format": "tune_dsr.dsr/1", "epoch": epoch, "config": config.to_dict(),
                "model_state_dict": model.state_dict(), "metrics": dict(metrics)}, path)


DSR_FORMAT = "tune_dsr.dsr/1"
# Written by the trainer (`last.pt`) and by each Tune trial checkpoint (`state.pt`).
TRAINER_STATE_FORMAT = "tune_dsr.trainer_state/1"
_FIX = ("pass best.pt or last.pt written by `python -m tune_dsr.train`, or a Tune trial "
        "checkpoint folder (checkpoint_NNNNNN/ holding state.pt)")


@dataclass(frozen=True)
class DSRCheckpoint:
    """What a DSR checkpoint holds, read without building the network: the file `path`, its
    `config`, the `state_dict` to load (the EMA weights where the file has them: `weights` says
    "ema" or "model"), its `metrics`, `epoch` and `format`."""

    path: Path
    config: Config
    state_dict: dict[str, Tensor]
    metrics: dict[str, Any]
    epoch: int | None
    weights: str
    format: str


def resolve_dsr_path(path: str | Path) -> Path:
    """The checkpoint file behind `path`: the file itself; in a folder its ``state.pt`` (a Tune
    trial checkpoint) or ``best.pt``; in a Tune trial folder its newest ``checkpoint_*/state.pt``.
    Raises CheckpointError if there is none."""
    given = Path(path).expanduser()
    resolved = given.resolve()
    if resolved.is_file():
        return resolved
    if not resolved.exists():
        raise CheckpointError(f"DSR checkpoint {resolved} does not exist (given as "
                              f"{str(path)!r}); {_FIX}.")
    for name in ("state.pt", "best.pt"):
        if (resolved / name).is_file():
            return resolved / name
    trial = sorted((p for p in resolved.glob("checkpoint_*") if (p / "state.pt").is_file()),
                   key=lambda p: (len(p.name), p.name))
    if trial:
        logger.info("%s is a Tune trial folder: using its newest checkpoint %s", resolved,
                    trial[-1].name)
        return trial[-1] / "state.pt"
    raise CheckpointError(f"the folder {resolved} holds no DSR checkpoint (no state.pt, best.pt "
                          f"or checkpoint_*/state.pt); {_FIX}.")


# Globals a weights-only load accepts anyway (torch's tensor rebuilders and their containers).
_PLAIN_GLOBALS = ("torch.", "collections.OrderedDict", "_codecs.encode", "builtins.set",
                  "builtins.frozenset", "builtins.bytearray", "builtins.slice", "builtins.complex")


def _pickled_globals(file: Path) -> list[str]:
    """The globals (importable names) a pickle references, found by parsing its opcodes with
    `pickletools`, which never builds or runs anything. [] for a file that is not a pickle."""
    names: list[str] = []
    strings: list[str] = []
    try:
        with open(file, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                    names.append(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                if isinstance(arg, str):
                    strings.append(arg)
    except (ValueError, EOFError, OSError, UnicodeDecodeError):
        pass  # not (all) a pickle: report what was found before the garbage
    return names


def _unsafe_global(exc: BaseException, file: Path) -> str | None:
    """The code-running global that made a `weights_only` load fail, if that was the reason:
    torch names it in its message for zip checkpoints; a plain pickle's opcodes are parsed."""
    match = re.search(r"GLOBAL ([\w.]+)", str(exc))
    if match:
        return match.group(1)
    foreign = [n for n in dict.fromkeys(_pickled_globals(file)) if not n.startswith(_PLAIN_GLOBALS)]
    return ", ".join(foreign[:3]) if foreign else None


def _reason(exc: BaseException) -> str:
    """A short why for a failed load; never torch's advice to turn `weights_only` off."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    elif "weights_only" in text:
        text = ""
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return f"{type(exc).__name__}: {line[:120]}" if line else type(exc).__name__


def read_dsr_checkpoint(path: str | Path,
                        map_location: str | torch.device = "cpu") -> DSRCheckpoint:
    """Read a DSR checkpoint safely: only tensors and plain data are ever unpickled
    (``weights_only=True``), so a file that would run code is refused, never run.

    Accepts `save_dsr` files (``best.pt``) and trainer states (``last.pt``, a Tune trial's
    ``state.pt`` or its folder), whose EMA weights are preferred. Raises CheckpointError naming
    the file, what is wrong with it and the fix.
    """
    file = resolve_dsr_path(path)
    try:
        with warnings.catch_warnings():
            # A foreign pickle draws a protocol warning before the refusal that matters.
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            data = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch.load raises many types on foreign or damaged files
        unsafe = _unsafe_global(exc, file)
        if unsafe is not None:
            raise CheckpointError(
                f"{file} holds Python objects other than tensors and plain data (it references "
                f"{unsafe}); refusing to unpickle it, since that could run code from the file. "
                f"A tune_dsr DSR checkpoint never does: {_FIX}.") from exc
        reason = _reason(exc)
        raise CheckpointError(f"{file} is not a PyTorch checkpoint that can be read ({reason}); "
                              f"{_FIX}.") from exc
    if not isinstance(data, dict) or "config" not in data or not (
            "model_state_dict" in data or "ema_state_dict" in data):
        keys = ", ".join(map(str, list(data)[:8])) if isinstance(data, dict) else \
            type(data).__name__
        raise CheckpointError(f"{file} is a PyTorch file but not a tune_dsr DSR checkpoint (it "
                              f"holds {keys or 'nothing'}; a DSR checkpoint has 'config' and "
                              f"'model_state_dict'); {_FIX}.")
    fmt = str(data.get("format", DSR_FORMAT))
    if fmt not in (DSR_FORMAT, TRAINER_STATE_FORMAT):
        raise CheckpointError(f"{file} has format {fmt!r}, which this version cannot read "
                              f"(expected {DSR_FORMAT!r} or {TRAINER_STATE_FORMAT!r}); {_FIX}.")
    if not isinstance(data["config"], dict):
        raise CheckpointError(f"{file}: its 'config' is not a dict; {_FIX}.")
    try:
        config = Config.from_dict(data["config"])
    except ConfigError as exc:
        # Only the network's shape matters for loading: a loss or training setting renamed by a
        # later version must not make older checkpoints unreadable.
        model_section = data["config"].get("model")
        try:
            config = Config.from_dict({"model": model_section if isinstance(model_section, dict)
                                       else {}})
        except ConfigError:
            raise CheckpointError(f"{file} holds a model config this version cannot use: "
                                  f"{exc}") from exc
        if not isinstance(model_section, dict):
            raise CheckpointError(f"{file} holds no model config ('config' has no 'model' "
                                  f"section); {_FIX}.") from exc
        logger.warning("%s: its config is from another tune_dsr version (%s); using only its "
                       "model section", file, exc)
    if config.model.vlr_size is None:
        raise CheckpointError(f"{file} names no VLR size (config model.vlr_size is null), so "
                              f"its network cannot be built; {_FIX}.")
    weights = "ema" if isinstance(data.get("ema_state_dict"), dict) else "model"
    state = data["ema_state_dict" if weights == "ema" else "model_state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{file} holds no DSR weights ({weights}_state_dict is not a dict "
                              f"of tensors); {_FIX}.")
    if fmt == DSR_FORMAT:
        weights = "ema"  # save_dsr is given the EMA network by the trainer
    epoch = data.get("epoch")
    metrics = data.get("metrics") or data.get("best_metrics") or {}
    return DSRCheckpoint(file, config, state, dict(metrics) if isinstance(metrics, dict) else {},
                         int(epoch) if isinstance(epoch, int) else None, weights, fmt)


def build_dsr(checkpoint: DSRCheckpoint) -> DSR:
    """The network a `DSRCheckpoint` describes, with its weights, in eval mode."""
    model = DSR(checkpoint.config.model)
    try:
        model.load_state_dict(checkpoint.state_dict)
    except RuntimeError as exc:
        detail = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise CheckpointError(
            f"{checkpoint.path}: its weights do not fit the DSR its config describes "
            f"(vlr_size={checkpoint.config.model.vlr_size}, width={checkpoint.config.model.width},"
            f" depth={checkpoint.config.model.depth}): {detail}. The file is damaged or was "
            f"edited; {_FIX}.") from None
    broken = [name for name, tensor in model.state_dict().items()
              if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if broken:
        raise CheckpointError(f"{checkpoint.path} holds NaN or infinite weights in "
                              f"{len(broken)} tensors ({', '.join(broken[:4])}); the training "
                              "diverged or the file is damaged: use another checkpoint.")
    return model.eval()


def load_dsr(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[DSR, Config,
                                                                                    dict[str, Any]]:
    """Load a DSR checkpoint written by `save_dsr` (or a trainer state), safely.

    Returns the network in eval mode (EMA weights where the file has them), its config and the
    checkpoint's metrics. Raises CheckpointError for a missing, unsafe or foreign file.
    """
    checkpoint = read_dsr_checkpoint(path, map_location)
    return build_dsr(checkpoint).to(map_location), checkpoint.config, checkpoint.metrics
