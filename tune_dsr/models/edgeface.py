"""EdgeFace: the frozen identity network whose embedding and activations train DSR.

DSR's identity and feature-matching losses compare EdgeFace on SR and HR faces. For those terms
to reach DSR, EdgeFace must be frozen (eval mode, no parameter gradients) yet differentiable with
respect to its input, and must hand back its intermediate activations from the same forward pass
that produced the embedding (the original ran it under ``no_grad`` and hooked detached
activations; see REFERENCE.md, "Its defects").

``load_edgeface`` accepts every checkpoint layout the EdgeFace world produces (official state
dicts, the original project's fine-tuned dict, DataParallel wrappers, int8 dynamic-quantised
files, TorchScript archives), works out the architecture from the keys and shapes, and always
unpickles with ``weights_only=True``: a checkpoint can never run code on load.
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

import timm
import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

LDC_VARIANT = "ldc_edgeface_s"

VARIANTS = ("edgeface_xxs", "edgeface_xs_gamma_06", "edgeface_s_gamma_05", "edgeface_base",
            LDC_VARIANT)

# Official variants: timm EdgeNeXt model and low-rank ratio γ (None: full-rank linears).
_EDGENEXT: dict[str, tuple[str, float | None]] = {
    "edgeface_xxs": ("edgenext_xx_small", None),
    "edgeface_xs_gamma_06": ("edgenext_x_small", 0.6),
    "edgeface_s_gamma_05": ("edgenext_small", 0.5),
    "edgeface_base": ("edgenext_base", None),
    # Not a published float model: the official int8 file edgeface_xs_q.pt quantised a full-rank
    # edgenext_x_small, so dequantising it needs this architecture.
    "edgeface_xs": ("edgenext_x_small", None),
}
_LOAD_ONLY = ("edgeface_xs",)

# Width of the stem conv tells the EdgeNeXt size apart (REFERENCE.md, "stage channels").
_STEM_WIDTH = {24: "edgenext_xx_small", 32: "edgenext_x_small", 48: "edgenext_small",
               80: "edgenext_base"}

# The original project's LDC backbone, (in, out, stride, hidden) per block (REFERENCE.md).
_LDC_BLOCKS = ((32, 64, 2, 64), (64, 64, 1, 128), (64, 128, 2, 128), (128, 128, 1, 256),
               (128, 128, 1, 256), (128, 256, 2, 256)) + ((256, 256, 1, 512),) * 4
# Indices into `features` whose outputs are the feature-matching taps: the stem (56×56) and the
# last block at 28×28, 14×14 and 7×7.
_LDC_TAPS = (0, 2, 5, 10)

_RESAVE_HINT = ("if you trust the file, re-save just its weights with "
                "`torch.save(model.state_dict(), path)` in the program that made it")


class EdgeFaceError(ValueError):
    """An EdgeFace checkpoint or variant that cannot be used, with what is wrong and the fix."""


# --------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------

class LowRankLinear(nn.Module):
    """``in → r`` (no bias) then ``r → out``: the official "gamma" variants' factorised linear.

    The attribute names ``linear1``/``linear2`` are the official checkpoints' key names.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.linear1 = nn.Linear(in_features, rank, bias=False)
        self.linear2 = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.linear1(x))


def _make_low_rank(module: nn.Module, gamma: float) -> None:
    """Replace every ``nn.Linear`` under `module` by a `LowRankLinear` of rank max(2, ⌊min·γ⌋)."""
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            rank = max(2, int(min(child.in_features, child.out_features) * gamma))
            setattr(module, name, LowRankLinear(child.in_features, child.out_features, rank,
                                                bias=child.bias is not None))
        else:
            _make_low_rank(child, gamma)


class IdentityNet(nn.Module):
    """Frozen EdgeFace: eval mode and no parameter gradients, but differentiable w.r.t. its input.

    ``forward(images)`` takes RGB in [0, 1], shape [B, 3, H, W] (112×112 for real faces), and
    returns ``(embedding [B, 512], activations)``: the embedding is not l2-normalised (cosine
    similarity does that) and the activations are early-to-late intermediate tensors of the same
    forward pass, still attached to the autograd graph, for the feature-matching loss.
    """

    variant: str

    def __init__(self, variant: str) -> None:
        super().__init__()
        self.variant = variant

    def forward(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"EdgeFace expects RGB images of shape [B, 3, H, W], but got "
                             f"{tuple(images.shape)}")
        # The official preprocessing: ToTensor then Normalize(0.5, 0.5).
        return self._embed((images - 0.5) / 0.5)

    def _embed(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        raise NotImplementedError

    def train(self, mode: bool = True) -> IdentityNet:
        """Stay in eval mode whatever is asked: a parent's ``.train()`` must not wake BatchNorm
        or dropout in the loss network."""
        return super().train(False)

    def freeze(self) -> IdentityNet:
        """Eval mode and ``requires_grad=False`` on every parameter; returns self."""
        self.eval()
        self.requires_grad_(False)
        return self


class EdgeNeXtIdentityNet(IdentityNet):
    """An official EdgeFace: timm EdgeNeXt with a 512-d head, held as ``model`` so that state-dict
    keys read ``model.stem.0.weight`` like the official checkpoints.

    Activations: the four stage outputs (28, 14, 7 and 3 px at 112 px input).
    """

    def __init__(self, variant: str) -> None:
        super().__init__(variant)
        timm_name, gamma = _EDGENEXT[variant]
        # Any: timm builds EdgeNeXt with stem/stages/norm_pre/head, which nn.Module's typing hides.
        model: Any = timm.create_model(timm_name, pretrained=False)
        model.reset_classifier(512)
        if gamma is not None:
            _make_low_rank(model, gamma)
        self.model: Any = model

    def _embed(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        if min(x.shape[-2:]) < 32:
            raise ValueError(f"{self.variant} needs images of at least 32×32 (its stride is 32), "
                             f"but got {tuple(x.shape[-2:])}")
        # The body of timm's forward, unrolled to keep each stage output.
        activations = []
        x = self.model.stem(x)
        for stage in self.model.stages:
            x = stage(x)
            activations.append(x)
        x = self.model.norm_pre(x)
        return self.model.head(x), activations


class _ConvBNAct(nn.Module):
    """Conv (no bias) → BatchNorm → Hardswish; attribute names follow the original checkpoint."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.Hardswish()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class _LDCBlock(nn.Module):
    """1×1 expand → depthwise 3×3 (with the stride) → 1×1 project, no residual."""

    def __init__(self, cin: int, cout: int, stride: int, hidden: int) -> None:
        super().__init__()
        self.conv_1x1_in = _ConvBNAct(cin, hidden, 1)
        self.conv_dw = _ConvBNAct(hidden, hidden, 3, stride, groups=hidden)
        self.conv_1x1_out = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_1x1_out(self.conv_dw(self.conv_1x1_in(x)))


class LDCIdentityNet(IdentityNet):
    """The original project's own "edgeface_s" (LDC blocks), everything under ``features.``.

    Activations: the stem (56 px) and the last block at 28, 14 and 7 px. Input must be 112×112
    (the embedding is a linear layer over the 7×7 map).
    """

    def __init__(self, variant: str = LDC_VARIANT) -> None:
        super().__init__(variant)
        self.features = nn.Sequential(
            _ConvBNAct(3, 32, 3, stride=2),
            *(_LDCBlock(*block) for block in _LDC_BLOCKS),
            _ConvBNAct(256, 512, 1),
            nn.Flatten(),
            nn.Linear(512 * 7 * 7, 512, bias=False),
            nn.BatchNorm1d(512),
        )

    def _embed(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        if tuple(x.shape[-2:]) != (112, 112):
            raise ValueError(f"{self.variant} needs 112×112 images (its embedding is a linear "
                             f"layer over a 7×7 map), but got {tuple(x.shape[-2:])}")
        activations = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in _LDC_TAPS:
                activations.append(x)
        return x, activations


def build_edgeface(variant: str) -> IdentityNet:
    """A randomly initialised, frozen EdgeFace of the named variant (see `VARIANTS`)."""
    if variant == LDC_VARIANT:
        return LDCIdentityNet().freeze()
    if variant in _EDGENEXT:
        return EdgeNeXtIdentityNet(variant).freeze()
    raise EdgeFaceError(
        f"unknown EdgeFace variant {variant!r}; valid variants are {', '.join(VARIANTS)} "
        f"(and {', '.join(_LOAD_ONLY)}, the full-rank layout of the official int8 "
        f"edgeface_xs_q.pt).")


# --------------------------------------------------------------------------------------------
# Reading checkpoint files
# --------------------------------------------------------------------------------------------

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

    weights_only refuses any global it does not know; for each one named ``*.FinetuneConfig``
    (or a pathlib path inside it) we retry with that name mapped to our own stand-in. Anything
    else is refused: it would be code from the file.
    """
    allowed: list[Any] = []
    while True:
        try:
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            match = re.search(r"GLOBAL (\S+) (?:was not an allowed global|whose module)", str(exc))
            if match is None:
                raise _corrupt(path, exc) from exc
            name = match.group(1)
            stand_in = _stand_in_for(name)
            if stand_in is None or (stand_in, name) in allowed:
                raise EdgeFaceError(
                    f"EdgeFace checkpoint {path} holds Python objects other than tensors and "
                    f"plain data (it references {name}); refusing to unpickle it, since that "
                    f"could run code from the file; {_RESAVE_HINT}."
                ) from None
            allowed.append((stand_in, name))
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
