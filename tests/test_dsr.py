import pytest
import torch

from tune_dsr.config import Config, ModelConfig
from tune_dsr.models.checkpoints import load_dsr, save_dsr
from tune_dsr.models.dsr import DSR, upscale_factors


@pytest.mark.parametrize("vlr", [8, 14, 16, 24, 32, 56, 64])
@pytest.mark.parametrize("residual", [False, True])
def test_any_vlr_size_to_112_in_unit_range(vlr, residual):
    torch.manual_seed(0)
    model = DSR(ModelConfig(vlr_size=vlr, width=8, depth=1, bicubic_residual=residual))
    out = model(torch.rand(2, 3, vlr, vlr) * 3 - 1)  # out-of-range input must still give [0, 1]
    assert out.shape == (2, 3, 112, 112)
    assert out.min() >= 0 and out.max() <= 1


def test_upscale_factors():
    assert upscale_factors(28, 112) == [2, 2]  # exact 4x
    assert upscale_factors(32, 112) == [2, 2]  # 3.5x: 128 px then resize down
    assert upscale_factors(16, 112) == [2, 2, 2]
    assert upscale_factors(56, 112) == [2]
    assert upscale_factors(16, 48) == [3]


def test_architecture_matches_reference():
    model = DSR(ModelConfig(vlr_size=32, width=112, depth=16))
    assert len(model.body) == 16
    assert model.head.out_channels == 112 and model.tail.out_channels == 3
    shuffles = [m for m in model.upsample if isinstance(m, torch.nn.PixelShuffle)]
    assert [s.upscale_factor for s in shuffles] == [2, 2]


def test_bicubic_residual_starts_near_bicubic():
    torch.manual_seed(0)
    cfg = ModelConfig(vlr_size=16, width=8, depth=1, bicubic_residual=True)
    model = DSR(cfg)
    for p in (model.tail.weight, model.tail.bias):
        torch.nn.init.zeros_(p)
    x = torch.rand(1, 3, 16, 16)
    bicubic = torch.nn.functional.interpolate(x, size=(112, 112), mode="bicubic").clamp(0, 1)
    assert torch.allclose(model(x), bicubic, atol=1e-6)


def test_save_and_load_round_trip(tmp_path):
    config = Config().replace(vlr_size=16, width=8, depth=2)
    model = DSR(config.model)
    save_dsr(tmp_path / "best.pt", model, config, {"val_psnr": 20.0}, epoch=3)
    loaded, loaded_config, metrics = load_dsr(tmp_path / "best.pt")
    assert loaded_config == config and metrics == {"val_psnr": 20.0}
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(loaded(x), model.eval()(x))
