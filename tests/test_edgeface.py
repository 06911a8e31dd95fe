"""EdgeFace loading and freezing: every checkpoint layout is built here, saved under tmp_path,
loaded back with `load_edgeface` and compared weight by weight. CPU only, random weights."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tune_dsr.errors import EdgeFaceError
from tune_dsr.models.checkpoints import load_edgeface
from tune_dsr.models.edgeface import VARIANTS, IdentityNet, build_edgeface

# Quantisation and TorchScript are deprecated in recent torch, yet real EdgeFace files use them.
pytestmark = [pytest.mark.filterwarnings("ignore:.*deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:.*deprecated:FutureWarning"),
              pytest.mark.filterwarnings("ignore:.*deprecated:UserWarning")]

OFFICIAL = ("edgeface_xxs", "edgeface_xs_gamma_06", "edgeface_s_gamma_05", "edgeface_base")
quantize_dynamic = getattr(torch.ao.quantization, "quantize_dynamic", None)
needs_quantization = pytest.mark.skipif(quantize_dynamic is None,
                                        reason="this torch has no quantize_dynamic")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _faces(batch: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, 112, 112)


def _save(obj: Any, path: Path) -> Path:
    torch.save(obj, path)
    return path


def _assert_weights_equal(net: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    loaded = net.state_dict()
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


def _check_loaded(net: IdentityNet, variant: str, expected: dict[str, torch.Tensor]) -> None:
    assert net.variant == variant
    _assert_weights_equal(net, expected)
    embedding, features = net(_faces())
    assert embedding.shape == (1, 512)
    assert len(features) >= 3


# ----------------------------------------------------------------------------- official files

@pytest.mark.parametrize("variant", OFFICIAL)
def test_official_state_dict_detects_variant(variant: str, tmp_path: Path) -> None:
    state = build_edgeface(variant).state_dict()
    assert next(iter(state)).startswith("model.stem.0.")  # the official key layout
    net = load_edgeface(str(_save(state, tmp_path / f"{variant}.pt")))
    _check_loaded(net, variant, state)


def test_gamma_variant_uses_low_rank_linears() -> None:
    state = build_edgeface("edgeface_xs_gamma_06").state_dict()
    # head fc 192 → 512 at γ 0.6: rank int(192 · 0.6) = 115.
    assert state["model.head.fc.linear1.weight"].shape == (115, 192)
    assert state["model.head.fc.linear2.weight"].shape == (512, 115)
    assert "model.head.fc.linear1.bias" not in state
    assert "model.head.fc.weight" not in build_edgeface("edgeface_s_gamma_05").state_dict()


# -------------------------------------------------------------------- fine-tuned checkpoints

def _finetune_config_class(monkeypatch: pytest.MonkeyPatch, module_name: str) -> type:
    """A FinetuneConfig dataclass that pickles as `<module_name>.FinetuneConfig`, like the one
    the original project's training script pickled into its checkpoints."""
    cls = dataclasses.make_dataclass("FinetuneConfig", [
        ("data_dir", Path, dataclasses.field(default=Path("/data/faces"))),
        ("epochs", int, 10), ("lr", float, 1e-4), ("backbone", str, "edgeface_s")])
    cls.__module__ = module_name
    if module_name not in sys.modules:
        monkeypatch.setitem(sys.modules, module_name, types.ModuleType(module_name))
    monkeypatch.setattr(sys.modules[module_name], "FinetuneConfig", cls, raising=False)
    return cls


@pytest.mark.parametrize(("module_name", "variant"), [("__main__", "ldc_edgeface_s"),
                                                      ("train_finetune", "edgeface_xxs")])
def test_finetuned_checkpoint_with_pickled_config(module_name: str, variant: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    config_cls = _finetune_config_class(monkeypatch, module_name)
    backbone = build_edgeface(variant).state_dict()
    checkpoint = {
        "epoch": 7,
        "backbone_state_dict": backbone,
        "arcface_state_dict": {"weight": torch.randn(4, 512)},
        "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]},
        "val_accuracy": 0.91,
        "subject_to_id": {"0001": 0, "0042": 1},
        "config": config_cls(),
    }
    path = _save(checkpoint, tmp_path / "edgeface_finetuned.pth")
    with pytest.raises(Exception, match="FinetuneConfig"):  # plain weights_only refuses it
        torch.load(path, weights_only=True)
    _check_loaded(load_edgeface(str(path)), variant, backbone)


def test_ldc_keys_all_start_with_features() -> None:
    state = build_edgeface("ldc_edgeface_s").state_dict()
    assert all(key.startswith("features.") for key in state)
    assert state["features.13.weight"].shape == (512, 512 * 7 * 7)  # the embedding linear
    assert "features.1.conv_1x1_in.conv.weight" in state


@pytest.mark.parametrize("wrapper", ["state_dict", "model_state_dict"])
@pytest.mark.parametrize("variant", ["edgeface_xxs", "ldc_edgeface_s"])
def test_wrapped_dataparallel_state_dicts(wrapper: str, variant: str, tmp_path: Path) -> None:
    state = build_edgeface(variant).state_dict()
    wrapped = {wrapper: {f"module.{key}": value for key, value in state.items()}, "epoch": 3}
    _check_loaded(load_edgeface(str(_save(wrapped, tmp_path / "ckpt.pt"))), variant, state)


def test_bare_timm_keys_without_model_prefix(tmp_path: Path) -> None:
    net = build_edgeface("edgeface_xxs")
    path = _save(net.model.state_dict(), tmp_path / "bare.pt")
    _check_loaded(load_edgeface(str(path)), "edgeface_xxs", net.state_dict())


# --------------------------------------------------------------------------- int8 quantised

def _dequantised_expectation(quantised: nn.Module) -> dict[str, torch.Tensor]:
    """The float state dict a dequantised copy of `quantised` must have."""
    expected: dict[str, torch.Tensor] = {}
    for name, module in quantised.named_modules():
        if isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
            weight, bias = module._weight_bias()
            expected[f"{name}.weight"] = weight.dequantize()
            if bias is not None:
                expected[f"{name}.bias"] = bias.detach()
    for key, value in quantised.state_dict().items():
        if isinstance(value, torch.Tensor) and "_packed_params" not in key \
                and not key.endswith((".scale", ".zero_point")):
            expected[key] = value
    return expected


@needs_quantization
@pytest.mark.parametrize("variant", ["edgeface_xxs", "edgeface_xs", "edgeface_xs_gamma_06"])
def test_dynamic_quantised_state_dict_is_dequantised(variant: str, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    quantised = quantize_dynamic(build_edgeface(variant), {nn.Linear}, dtype=torch.qint8)
    path = _save(quantised.state_dict(), tmp_path / "edgeface_q.pt")
    with caplog.at_level(logging.WARNING, logger="tune_dsr.models.checkpoints"):
        net = load_edgeface(str(path))
    assert "dequantised" in caplog.text
    _check_loaded(net, variant, _dequantised_expectation(quantised))
    faces = _faces()
    cosine = torch.cosine_similarity(net(faces)[0], quantised(faces)[0])
    assert cosine.item() > 0.95  # same network, up to int8 activation rounding


# ------------------------------------------------------------------------------ TorchScript

def test_torchscript_float_archive(tmp_path: Path) -> None:
    net = build_edgeface("edgeface_xxs")
    traced = torch.jit.trace(net.model, torch.randn(1, 3, 112, 112))
    torch.jit.save(traced, tmp_path / "edgeface_xxs.jit")
    loaded = load_edgeface(str(tmp_path / "edgeface_xxs.jit"))
    _check_loaded(loaded, "edgeface_xxs", net.state_dict())
    assert isinstance(loaded, IdentityNet)  # our module, so features come out of forward


@needs_quantization
def test_torchscript_quantised_archive(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    quantised = quantize_dynamic(build_edgeface("edgeface_xxs"), {nn.Linear}, dtype=torch.qint8)
    traced = torch.jit.trace(quantised.model, torch.randn(1, 3, 112, 112))
    torch.jit.save(traced, tmp_path / "edgeface_xxs_q.pt")
    with caplog.at_level(logging.WARNING, logger="tune_dsr.models.checkpoints"):
        net = load_edgeface(str(tmp_path / "edgeface_xxs_q.pt"))
    assert "dequantised" in caplog.text
    _check_loaded(net, "edgeface_xxs", _dequantised_expectation(quantised))


# --------------------------------------------------------------------------------- refusals

class _RunsShell:
    """A pickle payload that would run a shell command if unpickled with full pickle."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (self.command,)


def _assert_refused_without_running(checkpoint: Any, marker: Path, tmp_path: Path) -> None:
    path = _save(checkpoint, tmp_path / "evil.pt")
    with pytest.raises(EdgeFaceError, match="Python objects other than tensors") as info:
        load_edgeface(str(path))
    assert "system" in str(info.value) and "state_dict()" in str(info.value)
    assert not marker.exists()


def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    checkpoint = {"state_dict": build_edgeface("edgeface_xxs").state_dict(),
                  "hook": _RunsShell(f"touch {marker}")}
    _assert_refused_without_running(checkpoint, marker, tmp_path)


def test_malicious_pickle_inside_a_finetune_config_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The FinetuneConfig stand-in must not open the door to anything else."""
    marker = tmp_path / "pwned"
    config = _finetune_config_class(monkeypatch, "__main__")()
    config.backbone = _RunsShell(f"touch {marker}")
    checkpoint = {"backbone_state_dict": build_edgeface("edgeface_xxs").state_dict(),
                  "config": config}
    _assert_refused_without_running(checkpoint, marker, tmp_path)


def test_pickled_whole_module_is_refused(tmp_path: Path) -> None:
    path = _save(build_edgeface("edgeface_xxs").model, tmp_path / "module.pt")
    with pytest.raises(EdgeFaceError, match="refusing to unpickle"):
        load_edgeface(str(path))


def test_corrupt_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    truncated = _save(build_edgeface("edgeface_xxs").state_dict(), tmp_path / "truncated.pt")
    truncated.write_bytes(truncated.read_bytes()[:20_000])
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    for path in (garbage, truncated, empty):
        with pytest.raises(EdgeFaceError, match="not a readable PyTorch file"):
            load_edgeface(str(path))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(EdgeFaceError, match="does not exist") as info:
        load_edgeface(str(tmp_path / "nope.pth"))
    assert "random:<variant>" in str(info.value)


def test_missing_and_unexpected_keys_are_named(tmp_path: Path) -> None:
    state = build_edgeface("ldc_edgeface_s").state_dict()
    missing = dict(state)
    del missing["features.14.running_var"]
    with pytest.raises(EdgeFaceError, match=r"1 missing keys \(features\.14\.running_var\)"):
        load_edgeface(str(_save(missing, tmp_path / "missing.pt")))
    extra = {**state, "features.99.weight": torch.zeros(3)}
    with pytest.raises(EdgeFaceError, match=r"1 unexpected keys \(features\.99\.weight\)"):
        load_edgeface(str(_save(extra, tmp_path / "extra.pt")))
    reshaped = {**state, "features.13.weight": torch.zeros(512, 10)}
    with pytest.raises(EdgeFaceError, match=r"features\.13\.weight \(file \(512, 10\)"):
        load_edgeface(str(_save(reshaped, tmp_path / "reshaped.pt")))


def test_unrecognised_architecture_lists_keys(tmp_path: Path) -> None:
    path = _save({"encoder.weight": torch.zeros(2, 2), "encoder.bias": torch.zeros(2)},
                 tmp_path / "other.pt")
    with pytest.raises(EdgeFaceError, match=r"saw 2 keys: encoder\.weight, encoder\.bias"):
        load_edgeface(str(path))


# ----------------------------------------------------------------------------- random specs

def test_random_spec_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tune_dsr.models.checkpoints"):
        net = load_edgeface("random:edgeface_xxs")
    assert net.variant == "edgeface_xxs"
    assert "meaningless for recognition" in caplog.text


def test_unknown_variant_lists_valid_ones() -> None:
    with pytest.raises(EdgeFaceError) as info:
        load_edgeface("random:nope")
    assert "'nope'" in str(info.value)
    assert all(variant in str(info.value) for variant in VARIANTS)


# --------------------------------------------------------------------- frozen, differentiable

@pytest.fixture(scope="module", params=["edgeface_xxs", "ldc_edgeface_s"])
def net(request: pytest.FixtureRequest) -> IdentityNet:
    return build_edgeface(request.param)


def test_frozen_and_stays_in_eval(net: IdentityNet) -> None:
    assert not any(p.requires_grad for p in net.parameters())
    net.train()
    nn.Sequential(net).train()  # a parent switching to training mode
    assert not any(module.training for module in net.modules())


def test_gradient_reaches_input_through_embedding_and_every_feature(net: IdentityNet) -> None:
    faces = _faces(2).requires_grad_()
    embedding, features = net(faces)
    embedding.sum().backward(retain_graph=True)
    assert faces.grad is not None and faces.grad.abs().sum() > 0
    for feature in features:
        (grad,) = torch.autograd.grad(feature.sum(), faces, retain_graph=True)
        assert grad.abs().sum() > 0


def test_features_come_from_one_forward(net: IdentityNet) -> None:
    calls = []
    handle = net.register_forward_hook(lambda *_: calls.append(1))
    try:
        embedding, features = net(_faces(2))
    finally:
        handle.remove()
    assert len(calls) == 1 and embedding.shape == (2, 512)
    sizes = [feature.shape[-1] for feature in features]
    assert sizes == ([28, 14, 7, 3] if net.variant == "edgeface_xxs" else [56, 28, 14, 7])
    # Frozen: nothing in the graph needs a gradient unless the input does.
    assert not any(feature.requires_grad for feature in features)


def test_edgenext_forward_matches_timm() -> None:
    net = build_edgeface("edgeface_xxs")
    faces = _faces(2)
    with torch.no_grad():
        assert torch.allclose(net(faces)[0], net.model((faces - 0.5) / 0.5), atol=1e-6)


def test_non_finite_weights_are_refused(tmp_path):
    net = build_edgeface("edgeface_xxs")
    state = {f"model.{k}" if not k.startswith("model.") else k: v.clone()
             for k, v in net.state_dict().items()}
    key = next(k for k, v in state.items() if v.is_floating_point() and v.ndim > 1)
    state[key][0] = float("nan")
    path = tmp_path / "edgeface_nan.pt"
    torch.save(state, path)
    with pytest.raises(EdgeFaceError, match="NaN or infinite weights") as err:
        load_edgeface(str(path))
    assert key.removeprefix("model.") in str(err.value) or key in str(err.value)
