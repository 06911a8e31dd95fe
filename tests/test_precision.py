"""The fast paths compute what the float32, contiguous path computes, within stated tolerances.

Measured with the real EdgeFace (xxs) and VGG19 (random weights) at 112 px, one training step of
a small DSR: channels_last changes the terms by ~1e-7 (relative) and DSR's gradient by ~1e-6 of
its largest entry; bf16 autocast changes the terms by at most ~1e-3 and leaves the gradient's
direction (cosine 0.999) and size (within 2 %) in place. bf16 autocast runs on any CPU (emulated
where it is not native), so these tests do not need AVX-512 BF16.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tune_dsr import hardware
from tune_dsr.config import LossConfig, ModelConfig
from tune_dsr.models.dsr import DSR
from tune_dsr.training.losses import TERMS, DSRLoss, Perceptual

CHANNELS_LAST_TERMS_RTOL = 1e-5
CHANNELS_LAST_GRAD_RTOL = 1e-5  # of the gradient's largest entry
BF16_TERMS_RTOL = 1e-2
BF16_GRAD_COSINE = 0.99
BF16_GRAD_NORM_RTOL = 0.05


def _step(loss_nets, bf16: bool, channels_last: bool) -> tuple[dict[str, float], torch.Tensor]:
    identity_net, vgg = loss_nets
    layout = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = DSR(ModelConfig(vlr_size=16, width=16, depth=2)).to(memory_format=layout)
    generator = torch.Generator().manual_seed(1)
    vlr = torch.rand(2, 3, 16, 16, generator=generator).contiguous(memory_format=layout)
    hr = torch.rand(2, 3, 112, 112, generator=generator).contiguous(memory_format=layout)
    config = LossConfig()
    loss = DSRLoss(config, identity_net, Perceptual(vgg, config)).to(memory_format=layout)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        terms = loss(model(vlr), hr)
    terms["total"].backward()
    gradient = torch.cat([p.grad.flatten() for p in model.parameters()])
    loss.to(memory_format=torch.contiguous_format)  # the shared session networks, as they were
    return {name: terms[name].item() for name in ("total", *TERMS)}, gradient


@pytest.fixture(scope="module")
def float32_step(loss_nets):
    return _step(loss_nets, bf16=False, channels_last=False)


def test_channels_last_computes_the_same_terms_and_gradients(loss_nets, float32_step):
    terms, gradient = _step(loss_nets, bf16=False, channels_last=True)
    expected_terms, expected_gradient = float32_step
    for name, value in expected_terms.items():
        assert terms[name] == pytest.approx(value, rel=CHANNELS_LAST_TERMS_RTOL), name
    largest = expected_gradient.abs().max()
    assert (gradient - expected_gradient).abs().max() <= CHANNELS_LAST_GRAD_RTOL * largest


def test_bf16_autocast_keeps_terms_and_gradient_direction(loss_nets, float32_step):
    terms, gradient = _step(loss_nets, bf16=True, channels_last=True)
    expected_terms, expected_gradient = float32_step
    for name, value in expected_terms.items():
        assert terms[name] == pytest.approx(value, rel=BF16_TERMS_RTOL), name
    assert F.cosine_similarity(gradient, expected_gradient, dim=0) >= BF16_GRAD_COSINE
    assert gradient.norm().item() == pytest.approx(expected_gradient.norm().item(),
                                                  rel=BF16_GRAD_NORM_RTOL)


def test_autocast_dtype_follows_the_switch_and_the_hardware(monkeypatch):
    cpu = torch.device("cpu")
    assert hardware.autocast_dtype(cpu, amp=False) is None
    monkeypatch.setattr(hardware, "cpu_supports_bf16", lambda: True)
    assert hardware.autocast_dtype(cpu, amp=True) == torch.bfloat16
    monkeypatch.setattr(hardware, "cpu_supports_bf16", lambda: False)
    assert hardware.autocast_dtype(cpu, amp=True) is None  # emulated bf16 would be slower


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_step_with_bf16_and_channels_last_matches_cpu_float32(loss_nets, float32_step):
    """The CUDA path (bf16 autocast, channels_last, cudnn benchmark) against the CPU's float32."""
    identity_net, vgg = loss_nets
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = DSR(ModelConfig(vlr_size=16, width=16, depth=2)).to(device,
                                                               memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(1)
    vlr = torch.rand(2, 3, 16, 16, generator=generator).to(device)
    hr = torch.rand(2, 3, 112, 112, generator=generator).to(device)
    config = LossConfig()
    loss = DSRLoss(config, identity_net, Perceptual(vgg, config)).to(device)
    with torch.autocast("cuda", dtype=hardware.autocast_dtype(device, amp=True)):
        terms = loss(model(vlr), hr)
    terms["total"].backward()
    gradient = torch.cat([p.grad.flatten() for p in model.parameters()]).cpu()
    loss.to("cpu")
    expected_terms, expected_gradient = float32_step
    for name, value in expected_terms.items():
        assert terms[name].item() == pytest.approx(value, rel=BF16_TERMS_RTOL), name
    assert F.cosine_similarity(gradient, expected_gradient, dim=0) >= BF16_GRAD_COSINE
