"""MMDSR (docs/models/mmdsr.md): stages, shapes, gradients, switches, modules by hand, training, checkpoints, export."""

import math
import warnings

import pytest
import torch

from fastmlr import ops
from fastmlr.models import Backbone, create_model
from fastmlr.models.mmdsr import MMDSR, CrossLayerAttention, DualBranchFusion, DynamicSemantic

warnings.filterwarnings("ignore", message=".*random")
C = 4


def tiny(**cfg):
    torch.manual_seed(0)
    return create_model("mmdsr", C, backbone="resnet18", weights="none", dim=16, key_dim=8, embed_dim=6, **cfg)


def images(n=2, size=64, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name, size", [("resnet18", 64), ("mobilenet_v2", 64)])
def test_backbone_stages(name, size):
    bb = Backbone(name, "none").eval()
    x = images(1, size)
    with torch.no_grad():
        stages = bb.forward_stages(x)
        last = bb(x)
    assert [s.shape[1] for s in stages] == list(bb.stage_channels)
    assert [s.shape[2] for s in stages] == [size // 8, size // 16, size // 32]
    torch.testing.assert_close(stages[-1], last)


def test_shapes_and_attention_maps():
    m = tiny()
    assert isinstance(m, MMDSR) and m.model_name == "mmdsr"
    m.eval()
    x = images(3)
    z = m.forward_features(x)
    assert z.shape == (3, 16, 4, 4)  # the stride-16 grid
    assert m(x).shape == (3, C)
    maps = m.attention_maps(x)
    assert maps.shape == (3, C, 4, 4)
    torch.testing.assert_close(maps.sum(dim=(2, 3)), torch.ones(3, C))


def test_every_parameter_gets_a_gradient():
    m = tiny()
    out = m.forward_train(images())
    m.loss(out, torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0]])).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if not name.startswith("backbone."):
            assert p.grad.abs().sum() > 0, f"{name} gets no gradient"
    # The stride-8 level reaches the loss only through MFR.
    assert m.backbone.body[5][0].conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("switch, attr", [("use_mfr", "mfr"), ("use_cdca", "cdca"), ("use_dsr", "dsr")])
def test_each_module_switches_off(switch, attr):
    full, off = tiny(), tiny(**{switch: False})
    assert getattr(off, attr) is None and getattr(full, attr) is not None
    assert sum(p.numel() for p in off.parameters()) < sum(p.numel() for p in full.parameters())
    assert off.config[switch] is False
    off.eval()
    assert off(images(1)).shape == (1, C)


def test_graph_switch_and_presets():
    m = tiny(use_graph=False)
    assert not hasattr(m.dsr, "perspectives")
    m = tiny(ablation="none")
    assert m.mfr is None and m.cdca is None and m.dsr is None and len(m.lateral) == 2
    with pytest.raises(ValueError, match="unknown MMDSR ablation 'x'; known: no_mfr"):
        tiny(ablation="x")
    with pytest.raises(ValueError, match=r"embeddings must be \(4, E\) for 4 classes, got \(3, 6\)"):
        tiny(embeddings=torch.zeros(3, 6))


def test_cross_layer_attention_by_hand():
    mfr = CrossLayerAttention(3, key_dim=2).double()
    lv = torch.randn(1, 3, 3, 2, 1, dtype=torch.float64)  # N, S, d, H, W
    want = torch.empty(1, 3, 2, 1, dtype=torch.float64)
    wq, bq = mfr.query.weight[:, :, 0, 0], mfr.query.bias
    wk, bk = mfr.key.weight[:, :, 0, 0], mfr.key.bias
    for h in range(2):
        q = wq @ lv[0, 2, :, h, 0] + bq
        scores = torch.stack([(q * (wk @ lv[0, s, :, h, 0] + bk)).sum() / math.sqrt(2) for s in range(3)])
        a = torch.softmax(scores, dim=0)
        want[0, :, h, 0] = sum(a[s] * lv[0, s, :, h, 0] for s in range(3))
    torch.testing.assert_close(mfr(lv), want)


def test_dual_branch_fusion_is_a_convex_mix():
    fuse = DualBranchFusion(8, reduction=2)
    a, b = torch.randn(2, 8, 3, 3), torch.randn(2, 8, 3, 3)
    m = fuse.gate(a, b)
    assert ((m > 0) & (m < 1)).all()
    torch.testing.assert_close(fuse(a, b), m * a + (1 - m) * b)
    torch.testing.assert_close(fuse(a, a), a)  # fusing a map with itself returns it


def test_dynamic_graph_by_hand():
    dsr = DynamicSemantic(embed_dim=3, dim=4, perspectives=2, gcn_layers=1).double()
    z = torch.randn(1, 4, 2, 2, dtype=torch.float64)
    a0 = torch.randn(3, 3, dtype=torch.float64)
    # Category features by explicit softmax attention over the 4 positions.
    e = dsr.f_w(a0)
    k = dsr.key(z).flatten(2)[0]  # d, P
    zf = z.flatten(2)[0]
    v = torch.stack([zf @ torch.softmax(e[c] @ k / 2.0, dim=0) for c in range(3)])  # C, d
    torch.testing.assert_close(dsr.category_features(z, a0)[0], v)
    # Graph: mean over perspectives of weighted cosines, relu, rows normalised.
    w = dsr.perspectives
    s = torch.zeros(3, 3, dtype=torch.float64)
    for i in range(3):
        for j in range(3):
            s[i, j] = sum(torch.nn.functional.cosine_similarity(w[p] * v[i], w[p] * v[j], dim=0) for p in range(2)) / 2
    a = s.clamp_min(0)
    a = a / a.sum(dim=1, keepdim=True)
    torch.testing.assert_close(dsr.adjacency(v[None])[0], a)
    h = torch.nn.functional.leaky_relu(a @ (v @ dsr.gcn[0].weight.t()), 0.2)
    torch.testing.assert_close(dsr(z, a0)[0], v + h)


def test_graph_goes_through_fastmlr_ops(monkeypatch):
    dsr = DynamicSemantic(3, 4)
    monkeypatch.setenv("FASTMLR_BACKEND", "no-such-backend")
    with pytest.raises(ops.BackendError, match="no-such-backend"):
        dsr(torch.randn(1, 4, 2, 2), torch.randn(2, 3))


def test_short_training_run_loss_falls():
    m = tiny()
    x = images(8, 64, seed=5)
    with torch.no_grad():
        stages = [s.detach() for s in m.backbone.forward_stages(x)]
    y = (torch.rand(8, C, generator=torch.Generator().manual_seed(6)) > 0.5).float()
    opt = torch.optim.Adam([p for n, p in m.named_parameters() if not n.startswith("backbone.")], lr=3e-3)
    losses = []
    for _ in range(30):
        loss = m.loss({"logits": m.forward_head(m.fuse(stages))}, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_train_command_checkpoint_and_predict(tmp_path):
    from fakes import fmnist_root

    from fastmlr import train
    from fastmlr.checkpoint import model_from_checkpoint

    class _F:
        def mktemp(self, name):
            p = tmp_path / name
            p.mkdir()
            return p

    out = tmp_path / "run"
    args = train.build_parser().parse_args([
        "--model", "mmdsr", "--backbone", "resnet18", "--weights", "none", "--data", "mosaics",
        "--data-root", fmnist_root(_F()), "--train-size", "16", "--val-size", "8", "--image-size", "64",
        "--epochs", "1", "--batch-size", "8", "--lr", "1e-3", "--workers", "0", "--out", str(out),
        "--no-progress", "--quiet", "--embeddings", "random",
    ])
    res = train.train(args)
    assert math.isfinite(res["history"][-1]["train_loss"])
    ckpt = torch.load(out / "last.pt", weights_only=False)
    assert "label_embeddings" in ckpt["state_dict"]  # train gave MMDSR its embeddings
    m = model_from_checkpoint(str(out / "last.pt")).eval()
    assert m(images(2)).shape == (2, len(res["classes"]))


def test_onnx_export_matches_pytorch(tmp_path):
    export = pytest.importorskip("fastmlr.deploy.onnx", reason="fastmlr.deploy.onnx (the ONNX builder) is not importable")
    pytest.importorskip("onnxruntime")
    m = tiny()
    path = export.export_onnx(m, str(tmp_path / "mmdsr.onnx"), 64, max_batch=4)
    rep = export.verify_onnx(path, m, 64, max_batch=4)
    assert rep["checker"] == "passed" and rep["not_in_tensorrt"] == [], rep
    assert rep["max_abs_diff"]["random"] <= 1e-4, rep
