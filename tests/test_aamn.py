"""AAMN (docs/models/aamn.md): shapes, gradients, switches, the categorical memory, training, checkpoints, export."""

import math
import os
import tempfile
import warnings

import pytest
import torch
import torch.multiprocessing as mp

from fastmlr import ops
from fastmlr.models import create_model
from fastmlr.models.aamn import AAMN, CategoricalMemory, ChannelRelation, SpatialRelation

warnings.filterwarnings("ignore", message=".*random")
C = 4


def tiny(**cfg):
    torch.manual_seed(0)
    return create_model("aamn", C, backbone="resnet18", weights="none", dim=32, sop_dim=8, key_dim=8, **cfg)


def images(n=2, size=64, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_shapes_and_registration():
    m = tiny()
    assert isinstance(m, AAMN) and m.model_name == "aamn"
    out = m.forward_train(images(3))
    assert out["logits"].shape == (3, C) and out["memory_feat"].shape == (3, 32)
    m.eval()
    assert m(images(1)).shape == (1, C)
    assert m.cmm.memory.shape == (C, 32)


def test_every_parameter_gets_a_gradient():
    m = tiny()
    # The residual scales start at 0; move them so every branch is on the gradient path.
    with torch.no_grad():
        for gamma in (m.cre.gamma, m.sre.beta, m.cmm.gamma):
            gamma.fill_(0.5)
        m.cmm.memory.normal_()
    out = m.forward_train(images())
    m.loss(out, torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0]])).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if not name.startswith("backbone."):
            assert p.grad.abs().sum() > 0, f"{name} gets no gradient"


def test_zero_initialised_scales_still_learn():
    m = tiny()
    m.loss(m.forward_train(images()), torch.ones(2, C)).backward()
    for gamma in (m.cre.gamma, m.sre.beta, m.cmm.gamma):
        assert gamma.grad.abs().item() > 0


@pytest.mark.parametrize("switch, attr", [("use_memory", "cmm"), ("use_cre", "cre"), ("use_sre", "sre")])
def test_each_module_switches_off(switch, attr):
    full, off = tiny(), tiny(**{switch: False})
    assert getattr(off, attr) is None and getattr(full, attr) is not None
    assert sum(p.numel() for p in off.parameters()) <= sum(p.numel() for p in full.parameters())
    assert off.config[switch] is False
    assert off(images(1)).shape == (1, C)
    if switch == "use_memory":
        assert not any("memory" in k for k in off.state_dict())


def test_sre_halves_and_ablation_presets():
    m = tiny(use_second_order=False)
    assert not hasattr(m.sre, "row_conv") and hasattr(m.sre, "query")
    m = tiny(use_nonlocal=False)
    assert hasattr(m.sre, "row_conv") and not hasattr(m.sre, "query")
    with pytest.raises(ValueError, match="use_sre needs use_second_order or use_nonlocal"):
        tiny(use_second_order=False, use_nonlocal=False)
    m = tiny(ablation="none")
    assert m.cmm is None and m.cre is None and m.sre is None
    with pytest.raises(ValueError, match="unknown AAMN ablation 'bogus'; known: no_memory"):
        tiny(ablation="bogus")


def test_channel_relation_is_danet_attention_by_hand():
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    cre = ChannelRelation().double()
    with torch.no_grad():
        cre.gamma.fill_(0.7)
    f = x.flatten(2)
    want = torch.empty_like(f)
    for n in range(2):
        for i in range(3):
            scores = [sum(f[n, i, p] * f[n, j, p] for p in range(4)) / math.sqrt(4) for j in range(3)]
            z = sum(math.exp(s) for s in scores)
            want[n, i] = f[n, i] + 0.7 * sum(math.exp(scores[j]) / z * f[n, j] for j in range(3))
    torch.testing.assert_close(cre(x), want.reshape_as(x))


def test_spatial_relation_goes_through_fastmlr_ops(monkeypatch):
    sre = SpatialRelation(8, 4, 4)
    monkeypatch.setenv("FASTMLR_BACKEND", "no-such-backend")
    with pytest.raises(ops.BackendError, match="no-such-backend"):
        sre(torch.randn(1, 8, 3, 3))


def naive_ema(memory, filled, g, targets, ignore, momentum):
    memory, filled = memory.clone().double(), filled.clone()
    for c in range(memory.shape[0]):
        rows = [n for n in range(g.shape[0]) if targets[n, c] > 0.5 and not (ignore is not None and ignore[n, c])]
        if not rows:
            continue
        mean = sum(g[n].double() for n in rows) / len(rows)
        memory[c] = momentum * memory[c] + (1 - momentum) * mean if filled[c] else mean
        filled[c] = True
    return memory, filled


def test_memory_update_is_an_ema_of_positives():
    mem = CategoricalMemory(3, 5, key_dim=4, momentum=0.8)
    gen = torch.Generator().manual_seed(3)
    want_m, want_f = mem.memory.clone(), mem.memory_filled.clone()
    for step in range(3):
        g = torch.randn(4, 5, generator=gen)
        t = (torch.rand(4, 3, generator=gen) > 0.5).float()
        t[:, 2] = 0  # category 2 never seen: stays zero and unfilled
        ign = torch.zeros(4, 3, dtype=torch.bool)
        ign[0, 0] = True  # an ignored positive does not count
        t[0, 0] = 1
        mem.update(g, t, ign)
        want_m, want_f = naive_ema(want_m, want_f, g, t, ign, 0.8)
        torch.testing.assert_close(mem.memory.double(), want_m)
        assert mem.memory_filled.tolist() == want_f.tolist()
    assert mem.memory_filled[2].item() is False and mem.memory[2].abs().sum() == 0


def test_memory_reads_by_attention_by_hand():
    mem = CategoricalMemory(3, 4, key_dim=2).double()
    with torch.no_grad():
        mem.memory.normal_()
        mem.gamma.fill_(1.0)
    x = torch.randn(1, 4, 1, 2, dtype=torch.float64)
    k, v = mem.key(mem.memory), mem.value(mem.memory)
    want = x.clone()
    for p in range(2):
        q = mem.query(x[0, :, 0, p])
        a = torch.softmax(k @ q / math.sqrt(2), dim=0)
        want[0, :, 0, p] += a @ v
    torch.testing.assert_close(mem(x), want)


def test_memory_updates_in_training_only_and_changes_the_output():
    m = tiny()
    with torch.no_grad():
        m.cmm.gamma.fill_(1.0)
    y = torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0]])
    m.eval()
    before = m(images())
    m.loss(m.forward_train(images()), y)  # eval: no update
    assert not m.cmm.memory_filled.any()
    m.train()
    m.loss(m.forward_train(images()), y)
    assert m.cmm.memory_filled.tolist() == [True, True, False, True]
    m.eval()
    assert not torch.allclose(m(images()), before)  # the filled memory is read
    state = m.state_dict()
    assert "cmm.memory" in state and "cmm.memory_filled" in state


def _dist_worker(rank, world, init_file, g, t, result_file):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        mem = CategoricalMemory(t.shape[1], g.shape[1], key_dim=2, momentum=0.5)
        half = g.shape[0] // world
        for _ in range(2):
            mem.update(g[rank * half:(rank + 1) * half], t[rank * half:(rank + 1) * half])
        torch.save({"memory": mem.memory, "filled": mem.memory_filled}, f"{result_file}.{rank}")
    finally:
        dist.destroy_process_group()


def test_memory_is_reduced_across_ranks():
    gen = torch.Generator().manual_seed(4)
    g = torch.randn(6, 5, generator=gen)
    t = torch.tensor([[1.0, 0, 0], [0, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0]])
    # Category 0 has a positive on rank 0 only; category 1 on both.
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_dist_worker, args=(2, os.path.join(d, "init"), g, t, os.path.join(d, "res")), nprocs=2, join=True)
        got = [torch.load(os.path.join(d, f"res.{r}")) for r in range(2)]
    want_m, want_f = torch.zeros(3, 5, dtype=torch.float64), torch.zeros(3, dtype=torch.bool)
    for _ in range(2):  # one process over the whole batch
        want_m, want_f = naive_ema(want_m, want_f, g, t, None, 0.5)
    for r in range(2):
        torch.testing.assert_close(got[r]["memory"].double(), want_m)
        assert got[r]["filled"].tolist() == want_f.tolist() == [True, True, False]


def test_short_training_run_loss_falls():
    # The head is what is under test: the backbone's maps are computed once (the machine is small).
    m = tiny()
    with torch.no_grad():
        feats = m.forward_features(images(8, 64, seed=5))
    y = (torch.rand(8, C, generator=torch.Generator().manual_seed(6)) > 0.5).float()
    opt = torch.optim.Adam([p for n, p in m.named_parameters() if not n.startswith("backbone.")], lr=3e-3)
    losses = []
    for _ in range(30):
        loss = m.loss(m._head(feats), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert m.cmm.memory_filled.any()


def test_train_command_checkpoint_and_predict(tmp_path):
    from fakes import fmnist_root

    from fastmlr import train
    from fastmlr.checkpoint import model_from_checkpoint

    class _F:
        def mktemp(self, name):
            p = tmp_path / name
            p.mkdir()
            return p

    root = fmnist_root(_F())
    out = tmp_path / "run"
    args = train.build_parser().parse_args([
        "--model", "aamn", "--backbone", "resnet18", "--weights", "none", "--data", "mosaics", "--data-root", root,
        "--train-size", "16", "--val-size", "8", "--image-size", "64", "--epochs", "1", "--batch-size", "8",
        "--lr", "1e-3", "--workers", "0", "--out", str(out), "--no-progress", "--quiet",
    ])
    res = train.train(args)
    assert math.isfinite(res["history"][-1]["train_loss"])
    m = model_from_checkpoint(str(out / "last.pt")).eval()
    ckpt = torch.load(out / "last.pt", weights_only=False)
    assert ckpt["state_dict"]["cmm.memory_filled"].any()  # trained memory is in the checkpoint
    torch.testing.assert_close(m.cmm.memory, ckpt["state_dict"]["cmm.memory"])
    assert m(images(2)).shape == (2, len(res["classes"]))


def test_onnx_export_matches_pytorch(tmp_path):
    export = pytest.importorskip("fastmlr.deploy.onnx", reason="fastmlr.deploy.onnx (the ONNX builder) is not importable")
    pytest.importorskip("onnxruntime")
    m = tiny()
    with torch.no_grad():
        m.cre.gamma.fill_(0.3)
        m.sre.beta.fill_(0.3)
        m.cmm.gamma.fill_(0.3)
        m.cmm.memory.normal_()
    path = export.export_onnx(m, str(tmp_path / "aamn.onnx"), 64, max_batch=4)
    rep = export.verify_onnx(path, m, 64, max_batch=4)
    assert rep["checker"] == "passed" and rep["not_in_tensorrt"] == [], rep
    assert rep["max_abs_diff"]["random"] <= 1e-4, rep
