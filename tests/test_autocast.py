"""Mixed precision, for every registered model and ablation preset: training and the exported graph.

Training goes through the step ``fastmlr.train`` runs (fastmlr.amp: ``resolve_amp``,
``forward_loss``, ``optimizer_step``), on the CPU in bfloat16 autocast and, on a GPU
machine, on CUDA in float16 with loss scaling: the same code, so a dtype mix between
activations and parameters fails here before it fails on a GPU. The inference graph
is checked in float16 (InferenceGraph(fp16=True), what export --fp16 traces), in
float32 under autocast (the bench's autocast cell), and exported to ONNX in float32.
"""

import math
import warnings

import pytest
import torch

from fastmlr import amp as amp_mod
from fastmlr import ops, train
from fastmlr.deploy.graph import InferenceGraph, export_mode
from fastmlr.models import create_model, list_models, model_info

C, S, N = 4, 64, 2  # classes, image side (a 2 x 2 feature map), batch

CONFIGS = [(name, ablation) for name in list_models() for ablation in [None, *model_info(name).ablations]]
IDS = [name if ablation is None else f"{name}-{ablation}" for name, ablation in CONFIGS]
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)]


def build(name, ablation, device="cpu"):
    torch.manual_seed(0)
    cfg = {"backbone": "resnet18", "weights": None}
    if ablation is not None:
        cfg["ablation"] = ablation
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights / random label embeddings
        return create_model(name, C, **cfg).to(device)


def batch(device, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(N, 3, S, S, generator=g)
    targets = (torch.rand(N, C, generator=g) < 0.5).float()
    return images.to(device), targets.to(device), torch.zeros(N, C, dtype=torch.bool, device=device)


def test_train_runs_the_amp_step_of_fastmlr_amp():
    # The test below drives these functions; the training loop must be running the same ones.
    assert train.forward_loss is amp_mod.forward_loss and train.optimizer_step is amp_mod.optimizer_step
    assert amp_mod.resolve_amp("on", torch.device("cpu")) == amp_mod.MixedPrecision("cpu", torch.bfloat16)
    assert amp_mod.resolve_amp("auto", torch.device("cuda", 1)) == amp_mod.MixedPrecision("cuda", torch.float16)
    assert not amp_mod.resolve_amp("auto", torch.device("cpu")).enabled
    assert not amp_mod.resolve_amp("off", torch.device("cuda")).enabled
    assert amp_mod.MixedPrecision("cpu", torch.float16).scaler().is_enabled()  # float16 scales (a CUDA scaler disables itself without CUDA)
    assert not amp_mod.MixedPrecision("cpu", torch.bfloat16).scaler().is_enabled()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,ablation", CONFIGS, ids=IDS)
def test_every_model_trains_under_amp(name, ablation, device):
    mp = amp_mod.resolve_amp("on", torch.device(device))
    model = build(name, ablation, device).train()
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = mp.scaler()
    seen = []
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    hook = first_conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    losses = []
    for step in range(8):
        loss = amp_mod.forward_loss(model, model.forward_train, *batch(device, step), mp)
        assert math.isfinite(loss.item()), f"step {step + 1}: loss {loss.item()}"
        amp_mod.optimizer_step(loss, opt, scaler)
        losses.append(loss.item())
        # Two steps, or more while float16's loss scaler skips the first ones (inf gradients at its initial scale).
        if step >= 1 and all(not torch.equal(before[k], p) for k, p in model.named_parameters() if p.grad is not None):
            break
    hook.remove()
    assert seen and set(seen) == {mp.dtype}, f"the first convolution ran in {set(seen)}, not under {mp.describe()}"
    trained = [k for k, p in model.named_parameters() if p.grad is not None]
    assert trained and "backbone" not in trained[-1], f"no gradient reached the head: {trained[-3:]}"
    for k, p in model.named_parameters():
        assert p.dtype == torch.float32, f"{k} became {p.dtype}"
        assert torch.isfinite(p).all(), k
        if p.grad is not None:
            assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), k
            assert not torch.equal(before[k], p.detach()), f"{k} did not change in {len(losses)} steps"


def _graph_outputs(model, fp16=False, autocast=None):
    x = batch("cpu")[0]
    with export_mode(model), torch.no_grad():
        graph = InferenceGraph(model, fp16=fp16)
        ctx = torch.autocast("cpu", dtype=autocast) if autocast else torch.autocast("cpu", enabled=False)
        with ctx:
            return graph(x)


@pytest.mark.parametrize("name,ablation", CONFIGS, ids=IDS)
def test_every_inference_graph_runs_in_fp16_and_under_autocast(name, ablation):
    model = build(name, ablation)
    logits32, probs32 = _graph_outputs(model)
    scale = logits32.abs().max().item() + 1.0
    for what, kw, tol in (("fp16 graph", dict(fp16=True), 2e-2), ("bf16 autocast", dict(autocast=torch.bfloat16), 1e-1)):
        logits, probs = _graph_outputs(model, **kw)
        assert logits.dtype == probs.dtype == torch.float32 and logits.shape == (N, C), what
        assert torch.isfinite(logits).all(), what
        err = (logits - logits32).abs().max().item()
        assert err <= tol * scale, f"{what}: logits differ from the fp32 graph by {err} (scale {scale})"
        torch.testing.assert_close(probs, torch.sigmoid(logits), rtol=0, atol=0)


def test_fp32_graph_with_the_autocast_rule_exports_to_onnx():
    # SRDL's graph runs car_spatial_attention and car_pool through the autocast rule's code (which, outside
    # autocast, casts nothing): the exporter must trace it to plain float32 ops. (AAMN's and MMDSR's fp32
    # exports, through the other ops, are checked in tests/test_aamn.py and tests/test_mmdsr.py; each
    # export takes 10-25 s here.)
    onnx = pytest.importorskip("onnx")
    from fastmlr.deploy.onnx import _onnx_proto

    model = build("srdl", None)
    proto = _onnx_proto(model, S, False, 1, 1, 2, 18)
    onnx.checker.check_model(proto)
    elem = {vi.name: vi.type.tensor_type.elem_type for vi in list(proto.graph.input) + list(proto.graph.output)}
    assert elem == {"images": onnx.TensorProto.FLOAT, "logits": onnx.TensorProto.FLOAT, "probs": onnx.TensorProto.FLOAT}
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64, onnx.TensorProto.BOOL, onnx.TensorProto.INT32}
    assert {t.data_type for t in proto.graph.initializer} <= floats, "a float16/bfloat16 constant in the fp32 graph"


# -- each op's autocast rule, against the op run on inputs cast by hand --------------------------------

def _rule_inputs():
    g = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    sa = torch.rand(2, 3, 5, generator=g)
    return {
        "car_spatial_attention": (r(2, 5, 8), r(3, 8), r(8), r(())),
        "car_pool": (r(2, 8, 5), sa, torch.rand(2, 3, 8, generator=g)),
        "second_order_pool": (r(2, 8, 5),),
        "multi_perspective_cosine": (r(2, 3, 8), r(4, 8)),
        "oe_erase": (sa.reshape(2, 3, 5, 1), torch.tensor([[[0, 0, 1, 2], [-1] * 4, [0, 0, 0, 4]]] * 2)),
    }


# (op, which inputs are activations, i.e. in the autocast dtype; the others stay float32 parameters)
MIXES = [
    ("car_spatial_attention", (0, 1)),
    ("car_pool", (0, 1)),  # f and sa low, ca float32
    ("car_pool", (2,)),
    ("second_order_pool", (0,)),
    ("multi_perspective_cosine", (0,)),
    ("oe_erase", (0,)),
]


CPP_OPS = ("car_spatial_attention", "car_pool", "oe_erase")


RULE_CASES = [(backend, op, low) for backend in ("reference", "cpp") for op, low in MIXES
              if backend == "reference" or op in CPP_OPS]


@pytest.mark.parametrize("backend,op,low", RULE_CASES, ids=[f"{b}-{op}-{low}" for b, op, low in RULE_CASES])
def test_each_op_follows_its_autocast_rule(backend, op, low):
    if backend not in ops.available_backends("cpu"):
        pytest.skip(f"{backend} does not run on the CPU here (fastmlr._C not built)")
    amp = torch.bfloat16
    raw = _rule_inputs()[op]
    given = tuple(t.to(amp) if i in low else t for i, t in enumerate(raw))
    rule = ops.AUTOCAST_RULES[op]
    floats = [t.dtype for t in given if t.is_floating_point()]
    want_dtype = {"lower": amp, "fp32": torch.float32, "promote": max(floats, key=lambda d: torch.finfo(d).bits)}[rule]
    by_hand = tuple(t.to(want_dtype) if t.is_floating_point() else t for t in given)
    if not any(r.name == backend and r.runs for r in ops.backend_status("cpu", op, want_dtype)):
        backend = "reference"  # the C++ CPU kernels have no bfloat16: the dispatch falls back the same way
    with ops.use_backend(backend):
        want = getattr(ops, op)(*by_hand)
        with torch.autocast("cpu", dtype=amp):
            got = getattr(ops, op)(*given)
    assert got.dtype == want_dtype, f"{op} under autocast ran in {got.dtype}, rule {rule!r} says {want_dtype}"
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    if len(set(floats)) > 1:  # outside autocast a mix stays an error
        with pytest.raises(ValueError, match="has dtype"):
            getattr(ops, op)(*given)


def test_cpp_ops_called_directly_follow_the_same_rule():
    if "cpp" not in ops.available_backends("cpu"):
        pytest.skip("fastmlr._C is not built")
    f, sa, ca = _rule_inputs()["car_pool"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = torch.ops.fastmlr.car_pool(f.bfloat16(), sa.bfloat16(), ca)[0]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ops.car_pool(f.bfloat16().float(), sa.bfloat16().float(), ca, backend="cpp"),
                               rtol=0, atol=0)
    u, wc, s, b = _rule_inputs()["car_spatial_attention"]
    # "lower": cast to bfloat16, which the C++ CPU kernel does not implement: the error names it.
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(Exception, match="BFloat16"):
        torch.ops.fastmlr.car_spatial_attention(u, wc, s, b)


# -- fastmlr.train under --amp, end to end, and resuming across precisions -----------------------------

@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    from fakes import fmnist_root

    return fmnist_root(tmp_path_factory)


def _targs(out, fmnist, *extra, model="baseline", epochs=1, size=64):
    return ["--model", model, "--backbone", "resnet18", "--weights", "none", "--data", "mosaics", "--data-root",
            fmnist, "--train-size", "8", "--val-size", "2", "--image-size", str(size), "--epochs", str(epochs),
            "--batch-size", "4", "--max-steps", "2", "--lr", "1e-3", "--workers", "0", "--out", str(out),
            "--device", "cpu", "--no-progress", *extra]


def test_cli_amp_on_trains_srdl_in_bfloat16_on_the_cpu(tmp_path, fmnist, capsys):
    from fastmlr.checkpoint import load_checkpoint

    assert train.main(_targs(tmp_path / "r", fmnist, "--amp", "on", model="srdl")) == 0
    out = capsys.readouterr().out
    assert "bfloat16 autocast" in out and "needs CUDA" not in out
    ckpt = load_checkpoint(str(tmp_path / "r" / "last.pt"))
    assert ckpt["scaler"] is None  # bfloat16: no loss scaling, nothing to keep
    assert ckpt["history"][0]["train_images"] == 8 and math.isfinite(ckpt["history"][0]["train_loss"])
    from fastmlr import train_args
    from fastmlr.train_model import model_cfg

    args = train.build_parser().parse_args(_targs(tmp_path / "r", fmnist, model="srdl"))
    train_args.resolve_flags(args, None)  # the flags left out take their defaults, as train does
    torch.manual_seed(0)  # the run's initial weights: --seed 0, then the model as train builds it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        init = create_model("srdl", 10, **model_cfg(args, ckpt["class_names"]))
    assert torch.equal(init.label_embeddings, ckpt["state_dict"]["label_embeddings"])
    changed = [k for k, v in init.state_dict().items() if not torch.equal(v, ckpt["state_dict"][k])]
    assert any(k.startswith("f_sa") for k in changed) and any(k.startswith("backbone") for k in changed)
    # Two Adam steps of lr 1e-3 move each weight by at most ~2e-3: the same initial weights, trained.
    for k in ("f_sa.weight", "f_s.weight", "cls_weight"):
        step = (ckpt["state_dict"][k] - init.state_dict()[k]).abs().max().item()
        assert 0 < step <= 2.5e-3, (k, step)


def test_load_scaler_state_without_state_starts_afresh():
    fresh = torch.amp.GradScaler("cpu", init_scale=1024.0)  # an enabled scaler, as CUDA float16 AMP has
    note = amp_mod.load_scaler_state(fresh, None)  # a checkpoint saved without AMP (scaler None)
    assert "starts afresh" in note and fresh.get_scale() == 1024.0
    saved = torch.amp.GradScaler("cpu", init_scale=1024.0)
    saved.scale(torch.ones(()))  # the scale exists once a loss was scaled
    saved.update(new_scale=256.0)
    assert amp_mod.load_scaler_state(fresh, amp_mod.scaler_state(saved)) is None and fresh.get_scale() == 256.0
    off = torch.amp.GradScaler("cpu", enabled=False)
    assert amp_mod.load_scaler_state(off, amp_mod.scaler_state(saved)) is None and amp_mod.scaler_state(off) is None


def test_resume_with_loss_scaling_of_a_run_saved_without(tmp_path, fmnist, monkeypatch, capsys):
    # float16 autocast on the CPU, with an enabled scaler, stands in for CUDA AMP: resuming a float32 run under it.
    from fastmlr.checkpoint import load_checkpoint

    out = tmp_path / "r"
    assert train.main(_targs(out, fmnist, "--amp", "off", size=32)) == 0
    assert load_checkpoint(str(out / "last.pt"))["scaler"] is None
    monkeypatch.setitem(amp_mod.AMP_DTYPES, "cpu", torch.float16)
    capsys.readouterr()
    assert train.main(_targs(out, fmnist, "--amp", "on", "--resume", epochs=2, size=32)) == 0
    log = capsys.readouterr().out
    assert "float16 autocast with loss scaling" in log and "loss scaling starts afresh" in log
    ckpt = load_checkpoint(str(out / "last.pt"))
    assert ckpt["epoch"] == 1 and isinstance(ckpt["scaler"], dict) and ckpt["scaler"]["scale"] > 0
