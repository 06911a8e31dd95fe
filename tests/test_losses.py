"""The five loss terms: unit tests on the boring identity network at 32 px, and the real EdgeFace
and VGG19 (random weights) in the integration tests at 112 px."""

import pytest
import torch

from tune_dsr.config import LossConfig, ModelConfig
from tune_dsr.errors import PerceptualWeightsError
from tune_dsr.models.dsr import DSR
from tune_dsr.training.losses import TERMS, DSRLoss, Perceptual, build_vgg, total_variation


class CountingCalls(torch.nn.Module):
    """Wraps a network and counts forward passes (with and without autograd)."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.with_grad = 0
        self.without_grad = 0

    def forward(self, x):
        if torch.is_grad_enabled():
            self.with_grad += 1
        else:
            self.without_grad += 1
        return self.net(x)


def _dsr_and_batch(hr_size: int = 32):
    torch.manual_seed(0)
    model = DSR(ModelConfig(vlr_size=8, hr_size=hr_size, width=8, depth=1))
    vlr, hr = torch.rand(2, 3, 8, 8), torch.rand(2, 3, hr_size, hr_size)
    return model, vlr, hr


def _only(term: str) -> LossConfig:
    weights = {f"lambda_{t}": 0.0 for t in TERMS}
    weights[f"lambda_{term}"] = 1.0
    return LossConfig(**weights)


@pytest.mark.parametrize("term", ["identity", "feature_match"])
def test_identity_and_feature_match_alone_train_dsr(term, boring_nets):
    """The original's defects 1 and 2: these terms sent no gradient (no_grad, detached hooks)."""
    identity_net, vgg = boring_nets
    model, vlr, hr = _dsr_and_batch()
    loss = DSRLoss(_only(term), identity_net, Perceptual(vgg, _only(term)))
    terms = loss(model(vlr), hr)
    assert terms[term].item() > 0  # feature matching was always exactly zero in the original
    terms["total"].backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0
    assert model.head.weight.grad.abs().sum() > 0  # reaches the first layer


def test_perceptual_alone_trains_dsr(boring_nets):
    identity_net, vgg = boring_nets
    model, vlr, hr = _dsr_and_batch()
    cfg = _only("perceptual")
    DSRLoss(cfg, identity_net, Perceptual(vgg, cfg))(model(vlr), hr)["total"].backward()
    assert model.head.weight.grad.abs().sum() > 0


def test_each_network_runs_once_on_sr_with_grad_and_once_on_hr_without(boring_nets):
    """The original's defect 3: EdgeFace ran four times per step."""
    identity_net, vgg = boring_nets
    counted_id = CountingCalls(identity_net)
    perceptual = Perceptual(vgg, LossConfig())
    counted_vgg = CountingCalls(perceptual.slices[0])
    perceptual.slices[0] = counted_vgg
    model, vlr, hr = _dsr_and_batch()
    DSRLoss(LossConfig(), counted_id, perceptual)(model(vlr), hr)["total"].backward()
    assert (counted_id.with_grad, counted_id.without_grad) == (1, 1)
    assert (counted_vgg.with_grad, counted_vgg.without_grad) == (1, 1)


def test_terms_and_weighted_total(boring_nets):
    identity_net, vgg = boring_nets
    cfg = LossConfig(lambda_l1=2.0, lambda_perceptual=0.5, lambda_identity=0.3,
                     lambda_feature_match=0.2, lambda_tv=0.1)
    sr, hr = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    terms = DSRLoss(cfg, identity_net, Perceptual(vgg, cfg))(sr, hr)
    assert set(terms) == {*TERMS, "total", "sr_embedding", "hr_embedding"}
    assert terms["sr_embedding"].shape == (2, 16) and not terms["sr_embedding"].requires_grad
    expected = sum(getattr(cfg, f"lambda_{t}") * terms[t] for t in TERMS)
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert terms["l1"].item() == pytest.approx((sr - hr).abs().mean().item(), rel=1e-5)
    same = DSRLoss(cfg, identity_net, Perceptual(vgg, cfg))(hr, hr)
    assert same["identity"].item() == pytest.approx(0.0, abs=1e-5)
    assert same["feature_match"].item() == 0.0 and same["perceptual"].item() == 0.0


def test_zero_weight_network_is_skipped_in_training_but_computed_for_validation(boring_nets):
    identity_net, vgg = boring_nets
    cfg = _only("l1")
    counted = CountingCalls(identity_net)
    loss = DSRLoss(cfg, counted, Perceptual(vgg, cfg))
    sr, hr = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    assert loss(sr, hr)["identity"].item() == 0.0 and counted.with_grad == 0
    assert loss(sr, hr, compute_all=True)["identity"].item() > 0


def test_total_variation():
    flat = torch.ones(1, 3, 8, 8)
    assert total_variation(flat).item() == 0.0
    stripes = torch.zeros(1, 1, 2, 4)
    stripes[..., 1::2] = 1.0
    assert total_variation(stripes).item() == pytest.approx(1.0)


def test_perceptual_layers_by_name(boring_nets):
    _, vgg = boring_nets
    four = Perceptual(vgg, LossConfig())
    assert len(four.slices) == 4 and four.layer_weights == (0.4, 0.3, 0.2, 0.1)
    # The guide's earlier three layers, given in any order, run in network order.
    three = Perceptual(vgg, LossConfig(perceptual_layers={"relu3_4": 1.0, "relu1_2": 2.0,
                                                           "relu2_2": 3.0}))
    assert three.layer_weights == (2.0, 3.0, 1.0)
    assert [len(s) for s in three.slices] == [4, 5, 9]  # features[0:4], [4:9], [9:18]
    images = torch.rand(1, 3, 32, 32)
    assert [f.shape[1] for f in three.features(images)] == [64, 128, 256]


def test_identity_and_feature_match_train_dsr_through_the_real_edgeface(loss_nets):
    """Integration: the real EdgeFace (xxs, random weights) at 112 px passes gradient to DSR."""
    identity_net, _ = loss_nets
    model, vlr, hr = _dsr_and_batch(hr_size=112)
    cfg = LossConfig(lambda_l1=0.0, lambda_perceptual=0.0, lambda_tv=0.0)
    terms = DSRLoss(cfg, identity_net, None)(model(vlr), hr)
    assert terms["identity"].item() > 0 and terms["feature_match"].item() > 0
    assert terms["sr_embedding"].shape == (2, 512)
    terms["total"].backward()
    assert model.head.weight.grad.abs().sum() > 0


def test_vgg_trunk_matches_torchvision(boring_nets):
    """Only the layers up to relu4_4 are built, with torchvision's indices and numbers."""
    from torchvision.models import vgg19

    _, trunk = boring_nets
    full = vgg19(weights=None).features[:27].eval()
    assert [type(m) for m in trunk] == [type(m) for m in full]
    trunk_copy = build_vgg("random")
    trunk_copy.load_state_dict(full.state_dict())  # the same keys and shapes
    images = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(trunk_copy(images), full(images))
    assert sum(p.numel() for p in trunk.parameters()) == 10_585_152  # of VGG19's 143.7 M


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """A torchvision-layout VGG19 features state dict (random values), as the cache holds it."""
    from torchvision.models import vgg19

    torch.manual_seed(1)
    features = vgg19(weights=None).features[:27]
    path = tmp_path_factory.mktemp("vgg") / "vgg19-dcbb9e9d.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path, features.state_dict()


def test_vgg_from_file_and_from_hub_cache(vgg_file, tmp_path, monkeypatch):
    path, expected = vgg_file
    trunk = build_vgg(str(path))
    assert all(torch.equal(trunk.state_dict()[k], v) for k, v in expected.items())
    assert not any(p.requires_grad for p in trunk.parameters())
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    (hub / "checkpoints" / path.name).symlink_to(path)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    cached = build_vgg("imagenet")
    assert torch.equal(cached[0].weight, expected["0.weight"])


def test_vgg_missing_offline_says_how_to_provide(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(PerceptualWeightsError) as err:
        build_vgg("imagenet")
    message = str(err.value)
    assert "vgg19-dcbb9e9d.pth" in message and "--perceptual-weights" in message
    with pytest.raises(PerceptualWeightsError, match="does not exist"):
        build_vgg(str(tmp_path / "nope.pth"))


def test_vgg_wrong_file_is_refused(tmp_path):
    path = tmp_path / "not_vgg.pth"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(PerceptualWeightsError, match="lacks VGG19 keys"):
        build_vgg(str(path))
    path.write_bytes(b"garbage")
    with pytest.raises(PerceptualWeightsError, match="cannot read"):
        build_vgg(str(path))
