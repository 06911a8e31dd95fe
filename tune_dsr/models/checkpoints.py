"""Reading EdgeFace checkpoint files, safely: ``load_edgeface(path or "random:<variant>")``.

Accepts every checkpoint layout the EdgeFace world produces (official state dicts, the original
project's fine-tuned dict with its pickled ``FinetuneConfig``, DataParallel wrappers, int8
dynamic-quantised files, TorchScript archives), works out the architecture from the keys and
shapes, and always unpickles with ``weights_only=True``: a checkpoint can never run code on load.
"""

from __future__ import annotations

import logging
import pathlib
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tune_dsr.errors import EdgeFaceError
from tune_dsr.models.edgeface import (
    _EDGENEXT,
    _STEM_WIDTH,
    LDC_VARIANT,
    VARIANTS,
    EdgeNeXtIdentityNet,
    IdentityNet,
    build_edgeface,
)

logger = logging.getLogger(__name__)

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


def load_edgeface(spec: str, map_location: str | torch.device = "cpu") -> IdentityNet:
    """The frozen EdgeFace named by `spec`: a checkpoint path, or ``random:<variant>``.

    The file's layout and architecture are detected from its keys and shapes; the network is
    returned on `map_location`, in eval mode, with no parameter requiring gradients.
    """
    if spec.startswith("random:"):
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
