"""Every checkpoint file tune_dsr reads or writes, safely, with its format names.

- DSR: ``best.pt`` (`save_dsr`, format ``tune_dsr.dsr/1``: EMA weights, config, metrics), read
  back by `read_dsr_checkpoint` / `load_dsr`, which also take trainer states.
- Trainer state: ``last.pt`` and each Tune trial's ``state.pt`` (`write_trainer_state`, format
  ``tune_dsr.trainer_state/1``), read back by `read_trainer_state` to resume; a fine-tuning
  run's ``last.pt`` the same way under format ``tune_dsr.finetune_state/1``.
- Fine-tuned EdgeFace: ``edgeface_finetuned.pth`` (`save_finetuned_edgeface`, format
  ``tune_dsr.edgeface_finetuned/1``), the original project's fine-tuned layout
  (``backbone_state_dict``, ``arcface_state_dict``, ``subject_to_id``, ``val_accuracy``, a plain
  ``config`` dict), read by `load_edgeface` like any other recogniser.
- EdgeFace: ``load_edgeface(path or "random:<variant>")`` accepts every checkpoint layout the
  EdgeFace world produces (official state dicts, the original project's fine-tuned dict with its
  pickled ``FinetuneConfig``, DataParallel wrappers, int8 dynamic-quantised files, TorchScript
  archives) and works out the architecture from the keys and shapes.

Everything is unpickled with ``weights_only=True``: a checkpoint can never run code on load.
"""

from __future__ import annotations

import logging
import pathlib
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tune_dsr.config import Config
from tune_dsr.errors import CheckpointError, ConfigError, EdgeFaceError
from tune_dsr.files import atomic_write
from tune_dsr.models.dsr import DSR
from tune_dsr.models.edgeface import (
    _EDGENEXT,
    _STEM_WIDTH,
    LDC_VARIANT,
    VARIANTS,
    EdgeNeXtIdentityNet,
    IdentityNet,
    build_edgeface,
)

__all__ = [
    "DSR_FORMAT",
    "FINETUNED_EDGEFACE_FORMAT",
    "FINETUNE_STATE_FORMAT",
    "TRAINER_STATE_FORMAT",
    "DSRCheckpoint",
    "build_dsr",
    "load_dsr",
    "load_edgeface",
    "read_dsr_checkpoint",
    "read_trainer_state",
    "resolve_dsr_path",
    "save_dsr",
    "save_finetuned_edgeface",
    "write_trainer_state",
]

logger = logging.getLogger(__name__)


# ============================================================================= DSR and trainer

DSR_FORMAT = "tune_dsr.dsr/1"
# Written by the trainer (`last.pt`) and by each Tune trial checkpoint (`state.pt`).
TRAINER_STATE_FORMAT = "tune_dsr.trainer_state/1"
# A fine-tuning run's `last.pt`, and the recogniser it hands on.
FINETUNE_STATE_FORMAT = "tune_dsr.finetune_state/1"
FINETUNED_EDGEFACE_FORMAT = "tune_dsr.edgeface_finetuned/1"


def _save_atomically(document: dict[str, Any], path: str | Path) -> None:
    """Write then rename: a run killed mid-save leaves the previous file intact, and no
    temporary file stays behind when the write fails."""
    atomic_write(path, lambda out: torch.save(document, out))


def save_dsr(path: str | Path, model: nn.Module, config: Config, metrics: dict[str, float],
             epoch: int) -> None:
    """The deliverable: (EMA) weights, the config as a plain dict and the metrics that chose it."""
    _save_atomically({"format": DSR_FORMAT, "epoch": epoch, "config": config.to_dict(),
                      "model_state_dict": model.state_dict(), "metrics": dict(metrics)}, path)


def save_finetuned_edgeface(path: str | Path, backbone: nn.Module, head_weight: Tensor, *,
                            epoch: int, subject_to_id: dict[str, int], config: dict[str, Any],
                            metrics: dict[str, float]) -> None:
    """A fine-tuned recogniser in the original project's layout, with plain data only (its
    ``config`` a dict, not a pickled class), so that it loads with ``weights_only=True``.

    ``arcface_state_dict`` keeps the original's key name whatever the margin head was (the
    config's ``head`` says which); ``val_accuracy`` is rank-1 of the validation persons.
    """
    _save_atomically({
        "format": FINETUNED_EDGEFACE_FORMAT, "epoch": epoch,
        "backbone_state_dict": {k: v.detach().cpu() for k, v in backbone.state_dict().items()},
        "arcface_state_dict": {"weight": head_weight.detach().cpu()},
        "subject_to_id": dict(subject_to_id),
        "val_accuracy": float(metrics.get("val_rank1_full", float("nan"))),
        "config": dict(config), "metrics": dict(metrics)}, path)


def write_trainer_state(state: dict[str, Any], path: str | Path,
                        fmt: str = TRAINER_STATE_FORMAT) -> None:
    """Write a trainer state (tensors and plain data; its ``format`` set here)."""
    _save_atomically({**state, "format": fmt}, path)


def read_trainer_state(path: str | Path, fmt: str = TRAINER_STATE_FORMAT) -> dict[str, Any]:
    """A trainer state written by `write_trainer_state` (format `fmt`), read with
    ``weights_only=True``. Raises CheckpointError naming the file when it is missing, unreadable
    or of another kind."""
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"cannot resume: {file} does not exist")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types on foreign or damaged files
        raise CheckpointError(f"cannot resume from {file}: it cannot be read ({_reason(exc)}); "
                              "the run was killed while writing it or the file was damaged: "
                              "start the run again without --resume") from exc
    if not isinstance(state, dict) or state.get("format") != fmt:
        expected = ("a fine-tuning run's last.pt" if fmt == FINETUNE_STATE_FORMAT else
                    "last.pt or a Tune checkpoint's state.pt")
        raise CheckpointError(f"cannot resume from {file}: not a tune_dsr "
                              f"{'fine-tuning' if fmt == FINETUNE_STATE_FORMAT else 'trainer'} "
                              f"state (expected {expected}); a best.pt cannot be resumed from")
    return state

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
    if isinstance(data, dict) and "backbone_state_dict" in data:
        raise CheckpointError(f"{file} is a fine-tuned EdgeFace recogniser, not a DSR; pass it "
                              f"as --edgeface, and as --dsr a DSR checkpoint ({_FIX}).")
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


# ============================================================================= EdgeFace

_RESAVE_HINT = ("if you trust the file, re-save just its weights with "
                "`torch.save(model.state_dict(), path)` in the program that made it")



class _PickledConfig:
    """Inert stand-in for a pickled ``FinetuneConfig`` dataclass: the restricted unpickler fills
    `fields` with its (already plain-data) attributes; no code from the file runs."""

    fields: dict[str, Any]

    def __setstate__(self, state: Any) -> None:
        # pickle's BUILD state is a dict, or (dict | None, slots dict) for slotted classes.
        parts = state if isinstance(state, tuple) else (state,)
        self.fields = {}
        for part in parts:
            if isinstance(part, dict):
                self.fields.update(part)


def _posix_path_as_str(*parts: str) -> str:
    """Stand-in for a pickled PosixPath (a config field): the path as a string."""
    return str(pathlib.PurePosixPath(*parts))


def _windows_path_as_str(*parts: str) -> str:
    """Stand-in for a pickled WindowsPath (a config field): the path as a string."""
    return str(pathlib.PureWindowsPath(*parts))


def _stand_in_for(global_name: str) -> Callable[..., Any] | None:
    """The inert object allowed to play `global_name` in a checkpoint, or None to refuse it."""
    if global_name.rsplit(".", 1)[-1] == "FinetuneConfig":
        return _PickledConfig
    # A config dataclass may hold pathlib paths; module is pathlib or pathlib._local (3.13+).
    match = re.fullmatch(r"pathlib(?:\._local)?\.(?:Pure)?(Posix|Windows)?Path", global_name)
    if match:
        return _windows_path_as_str if match.group(1) == "Windows" else _posix_path_as_str
    return None


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files with a ``constants.pkl`` record (torch's own test)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("constants.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _corrupt(path: Path, exc: BaseException) -> EdgeFaceError:
    # torch's own unpickling message advises turning weights_only off: never repeat that advice.
    text = "" if isinstance(exc, pickle.UnpicklingError) else str(exc).strip()
    detail = (text.splitlines() or [""])[0].split(". ")[0][:200]
    reason = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return EdgeFaceError(
        f"EdgeFace checkpoint {path} is not a readable PyTorch file (it may be empty, truncated, "
        f"corrupt, or another format; {reason}). Download or copy it again, or pass "
        f"random:<variant> to run without trained weights.")


def _read_pickled(path: Path, map_location: str | torch.device) -> Any:
    """``torch.load(weights_only=True)``, letting known config classes in as inert stand-ins.

    torch lists the globals a checkpoint references beyond tensors and plain data, without
    unpickling it; each one named ``*.FinetuneConfig`` (or a pathlib path inside it) is mapped to
    our own stand-in. Anything else is refused before loading: it would be code from the file.
    """
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as exc:  # not a zip checkpoint, truncated, or not a torch file at all
        raise _corrupt(path, exc) from exc
    allowed: list[Any] = []
    for name in unsafe:
        stand_in = _stand_in_for(name)
        if stand_in is None:
            raise EdgeFaceError(
                f"EdgeFace checkpoint {path} holds Python objects other than tensors and "
                f"plain data (it references {name}); refusing to unpickle it, since that "
                f"could run code from the file; {_RESAVE_HINT}.")
        allowed.append((stand_in, name))
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch.load raises many types on garbage input
        raise _corrupt(path, exc) from exc


def _read_torchscript(path: Path,
                      map_location: str | torch.device) -> dict[str, Any]:
    """A TorchScript archive's weights, in `state_dict` layout, without running its code.

    Dynamic-quantised linears keep their weights in packed C++ objects that a script module's
    ``state_dict()`` leaves out; unpack them with the quantized op (not the archive's own
    methods) into the ``<name>._packed_params._packed_params`` entries a pickled quantised
    state dict would have.
    """
    try:
        with warnings.catch_warnings():
            # Recent torch deprecates TorchScript; the user asked for a file, not for jit.
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location=map_location)
    except Exception as exc:
        raise _corrupt(path, exc) from exc
    state: dict[str, Any] = dict(module.state_dict())
    for name, sub in module.named_modules():
        if getattr(sub, "original_name", "") == "LinearPackedParams":
            state[f"{name}._packed_params"] = tuple(
                torch.ops.quantized.linear_unpack(sub._packed_params))
    return state


def _unwrap(obj: Any, path: Path) -> tuple[Mapping[str, Any], str]:
    """The backbone state dict inside a loaded checkpoint, and a name for its container."""
    if not isinstance(obj, Mapping):
        raise EdgeFaceError(
            f"EdgeFace checkpoint {path} holds a {type(obj).__name__}, not a state dict or a "
            f"checkpoint dict; save the network's weights with "
            f"`torch.save(model.state_dict(), path)`.")
    if "backbone_state_dict" in obj:
        epoch = obj.get("epoch")
        fmt = "fine-tuned checkpoint" + (f", epoch {epoch}" if isinstance(epoch, int) else "")
        state = obj["backbone_state_dict"]
    elif "state_dict" in obj:
        state, fmt = obj["state_dict"], "'state_dict' checkpoint"
    elif "model_state_dict" in obj:
        state, fmt = obj["model_state_dict"], "'model_state_dict' checkpoint"
    else:
        state, fmt = obj, "state dict"
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise EdgeFaceError(
            f"EdgeFace checkpoint {path} ({fmt}) does not hold a state dict of named tensors "
            f"(top-level keys: {_first(list(obj))}); save the network's weights with "
            f"`torch.save(model.state_dict(), path)`.")
    return state, fmt


def _dequantise(state: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """Turn int8 dynamic-quantised linears back into float ``weight``/``bias`` entries.

    ``quantize_dynamic`` stores each linear as ``<p>._packed_params._packed_params = (qweight,
    bias)`` plus ``<p>.scale``, ``<p>.zero_point`` and ``<p>._packed_params.dtype``, which the
    float network has no use for. Returns the new dict and whether anything was dequantised.
    """
    suffix = "._packed_params._packed_params"
    prefixes = [key[: -len(suffix)] for key in state if key.endswith(suffix)]
    if not prefixes:
        return dict(state), False
    out = dict(state)
    for prefix in prefixes:
        weight, bias = out.pop(prefix + suffix)
        for extra in (".scale", ".zero_point", "._packed_params.dtype"):
            out.pop(prefix + extra, None)
        out[prefix + ".weight"] = weight.dequantize() if weight.is_quantized else weight
        if bias is not None:
            out[prefix + ".bias"] = bias.detach()
    return out, True


def _strip_prefixes(state: Mapping[str, Any]) -> dict[str, Any]:
    """Drop ``module.`` (DataParallel) and ``model.`` (official wrapper) prefixes shared by every
    key, so each layout reduces to bare ``stem.``/``stages.``/``head.`` or ``features.`` keys."""
    out = dict(state)
    changed = True
    while changed and out:
        changed = False
        for prefix in ("module.", "model."):
            if all(key.startswith(prefix) for key in out):
                out = {key[len(prefix):]: value for key, value in out.items()}
                changed = True
    return out


def _first(items: list[str], n: int = 6) -> str:
    """The first `n` items for a message, with how many were left out."""
    if not items:
        return "none"
    more = f", … ({len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _detect_variant(state: Mapping[str, Any], path: Path) -> str:
    """The EdgeFace variant a (prefix-stripped) state dict was saved from.

    LDC: ``features.`` keys with LDC blocks. Official: the stem width picks the EdgeNeXt size,
    ``.linear1.`` keys mean the low-rank ("gamma") form.
    """
    keys = list(state)
    if (any(k.startswith("features.") for k in keys)
            and any(".conv_1x1_in." in k for k in keys)):
        return LDC_VARIANT
    stem = state.get("stem.0.weight")
    if isinstance(stem, Tensor) and stem.ndim == 4 and any(k.startswith("stages.") for k in keys):
        timm_name = _STEM_WIDTH.get(stem.shape[0])
        low_rank = any(k.endswith(".linear1.weight") for k in keys)
        for variant, (name, gamma) in _EDGENEXT.items():
            if name == timm_name and (gamma is not None) == low_rank:
                return variant
        raise EdgeFaceError(
            f"EdgeFace checkpoint {path} looks like a timm EdgeNeXt (stem width {stem.shape[0]}, "
            f"{'low-rank' if low_rank else 'full-rank'} linears), which matches no EdgeFace "
            f"variant; known ones are {', '.join(VARIANTS)}. Use an official EdgeFace checkpoint.")
    raise EdgeFaceError(
        f"EdgeFace checkpoint {path} has no EdgeFace architecture this loader knows: expected "
        f"official keys like 'model.stem.0.weight' and 'model.stages.…' or the LDC backbone's "
        f"'features.1.conv_1x1_in.…', but saw {len(keys)} keys: {_first(keys)}. Pass an EdgeFace "
        f"checkpoint (edgeface_*.pt or the fine-tuned edgeface_finetuned.pth).")


def _load_strict(net: IdentityNet, state: Mapping[str, Any], path: Path) -> None:
    """Load every weight or fail naming the missing, unexpected and mis-shaped keys."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} (file {tuple(v.shape)}, model {tuple(expected[k].shape)})"
                  for k, v in state.items()
                  if k in expected and (not isinstance(v, Tensor) or v.shape != expected[k].shape)]
    if missing or unexpected or mismatched:
        raise EdgeFaceError(
            f"EdgeFace checkpoint {path} does not fit the detected architecture {net.variant}: "
            f"{len(missing)} missing keys ({_first(missing)}), {len(unexpected)} unexpected keys "
            f"({_first(unexpected)}), {len(mismatched)} shape mismatches ({_first(mismatched)}). "
            f"The file is damaged or from a different network; use an unmodified EdgeFace "
            f"checkpoint.")
    net.load_state_dict(state, strict=True)


def load_edgeface(spec: str, map_location: str | torch.device = "cpu",
                  seed: int = 0) -> IdentityNet:
    """The frozen EdgeFace named by `spec`: a checkpoint path, or ``random:<variant>``.

    The file's layout and architecture are detected from its keys and shapes; the network is
    returned on `map_location`, in eval mode, with no parameter requiring gradients. A random
    network is drawn from `seed` (the global RNG untouched), so that ``random:<variant>`` names
    one network wherever it is loaded: the one a smoke test's DSR trained against is the one
    its fine-tuning starts from and its evaluation reads with.
    """
    if spec.startswith("random:"):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = build_edgeface(spec[len("random:"):])
        logger.warning("[EdgeFace] using a RANDOMLY INITIALISED %s: its embeddings are "
                       "meaningless for recognition, so identity metrics and losses from it are "
                       "only good for smoke tests", net.variant)
        return net.to(map_location)

    path = Path(spec).expanduser().resolve()
    if not path.is_file():
        raise EdgeFaceError(
            f"EdgeFace checkpoint {path} does not exist (given as {spec!r}); pass the path of an "
            f"EdgeFace checkpoint (e.g. edgeface_xs_gamma_06.pt or edgeface_finetuned.pth), or "
            f"random:<variant> for a smoke test, with <variant> one of {', '.join(VARIANTS)}.")
    if _is_torchscript(path):
        state: Mapping[str, Any] = _read_torchscript(path, map_location)
        fmt = "TorchScript archive"
    else:
        state, fmt = _unwrap(_read_pickled(path, map_location), path)
    state, dequantised = _dequantise(state)
    if dequantised:
        fmt += ", int8 dequantised"
        logger.warning("[EdgeFace] %s holds int8 dynamic-quantised linear layers; dequantised "
                       "them into the float network (differentiable, but carrying the int8 "
                       "rounding error)", path)
    state = _strip_prefixes(state)
    variant = _detect_variant(state, path)
    net = build_edgeface(variant)
    if isinstance(net, EdgeNeXtIdentityNet):
        state = {f"model.{key}": value for key, value in state.items()}
    _load_strict(net, state, path)
    # A damaged file with NaN/inf weights would otherwise pass as "every trial diverged".
    broken = [name for name, tensor in net.state_dict().items()
              if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if broken:
        raise EdgeFaceError(
            f"EdgeFace checkpoint {path} holds NaN or infinite weights in {len(broken)} tensors "
            f"({_first(broken)}); the file is damaged: use an intact copy.")
    net.freeze().to(map_location)
    logger.info("[EdgeFace] loaded %s from %s (%s)", variant, path, fmt)
    return net
