"""fastmlr.deploy.fp16: mixed fp16 graphs chosen to meet an error budget.

References are independent of the code under test: PyTorch eager fp32 on the
original model (the probabilities the budget is measured against), onnxruntime
sessions opened here on the written files, the ONNX checker, and the element
types read straight from the written graph's initializers and inferred types.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from fastmlr import deploy
from fastmlr import export as ex
from fastmlr.data import FashionMosaics
from fastmlr.deploy import fp16
from fastmlr.models import create_model

SIZE = 64


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = create_model("srdl", 5, backbone="resnet18", weights="none", use_oe=False)
    return m.eval()


@pytest.fixture(scope="module")
def fp32_graph(model, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("fp16") / "m.onnx")
    deploy.export_onnx(model, path, SIZE, max_batch=8)
    return path


@pytest.fixture(scope="module")
def sets(model):
    g = torch.Generator().manual_seed(0)
    ds = FashionMosaics("val", num_images=4, image_size=SIZE, seed=1)
    real = torch.stack([ds[i][0] for i in range(4)])
    imgs = {"random": torch.randn(2, 3, SIZE, SIZE, generator=g), "real": real}
    with torch.no_grad():
        ref = {k: torch.sigmoid(model(x)).numpy() for k, x in imgs.items()}
        half = deploy.InferenceGraph(model, fp16=True)
        torch_half = {k: half(x)[1].numpy() for k, x in imgs.items()}
    return {"images": {k: x.numpy() for k, x in imgs.items()}, "ref": ref, "torch_fp16": torch_half}


def _ort_probs(path, images):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    s = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
    return {k: s.run(["probs"], {"images": x})[0] for k, x in images.items()}


def _max_err(probs, ref):
    return max(float(np.abs(probs[k].astype(np.float64) - ref[k]).max()) for k in probs)


def _conv_weight_types(m):
    inits = {t.name: t.data_type for t in m.graph.initializer}
    return [inits.get(n.input[1]) for n in m.graph.node if n.op_type == "Conv"]


def _check_graph(path, n_convs_fp32_graph):
    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    io = {v.name: v.type.tensor_type.elem_type for v in list(m.graph.input) + list(m.graph.output)}
    assert io == {"images": onnx.TensorProto.FLOAT, "logits": onnx.TensorProto.FLOAT, "probs": onnx.TensorProto.FLOAT}
    types = _conv_weight_types(m)
    assert len(types) == n_convs_fp32_graph
    return m, types


def test_default_budget_keeps_every_conv_fp16_and_reports_the_true_error(fp32_graph, sets, tmp_path):
    out = str(tmp_path / "m.fp16.onnx")
    rep = fp16.search_fp16(fp32_graph, out, sets["images"], budget=1e-2, reference=sets["ref"],
                           compare={"PyTorch's own fp16 forward": sets["torch_fp16"]})
    n_convs = sum(n.op_type == "Conv" for n in onnx.load(fp32_graph).graph.node)
    m, types = _check_graph(out, n_convs)
    assert types == [onnx.TensorProto.FLOAT16] * n_convs
    assert rep["conv_fp16_fraction"] == 1.0
    # The final Sigmoid reads fp32 logits: its input is produced by a Cast to float.
    sig = next(n for n in m.graph.node if "probs" in n.output)
    producer = next(n for n in m.graph.node if sig.input[0] in n.output)
    assert sig.op_type == "Sigmoid" and producer.op_type == "Cast"
    assert producer.attribute[0].i == onnx.TensorProto.FLOAT
    err = _max_err(_ort_probs(out, sets["images"]), sets["ref"])
    assert err <= 1e-2 and rep["ok"]
    assert rep["error_final"]["max"] == pytest.approx(err, rel=1e-6, abs=1e-9)
    assert rep["images"] == 6
    own = _max_err(sets["torch_fp16"], sets["ref"])
    assert rep["compare"]["PyTorch's own fp16 forward"]["max"] == pytest.approx(own, rel=1e-6)
    text = "\n".join(fp16.format_report(rep))
    assert "PyTorch's own fp16 forward" in text and f"{err:.2e}" in text
    side = fp16.sidecar_fields(rep)
    assert side["error"] == rep["error_final"]["max"] and side["budget"] == 1e-2


def test_a_budget_all_fp16_misses_is_met_by_keeping_nodes(fp32_graph, sets, tmp_path):
    g = onnx.load(fp32_graph).graph
    # The floor with only the convolutions in fp16, and plain fp16: a budget between them must be met
    # by keeping non-conv nodes, with every convolution still fp16.
    non_conv = [n.name for n in g.node if n.op_type != "Conv"]
    floor_path, all_path = str(tmp_path / "floor.onnx"), str(tmp_path / "all.onnx")
    onnx.save(fp16.convert_fp16(fp32_graph, keep_fp32=non_conv), floor_path)
    onnx.save(fp16.convert_fp16(fp32_graph), all_path)
    floor = _max_err(_ort_probs(floor_path, sets["images"]), sets["ref"])
    plain = _max_err(_ort_probs(all_path, sets["images"]), sets["ref"])
    assert floor < plain, (floor, plain)
    budget = (floor + plain) / 2
    out = str(tmp_path / "m.fp16.onnx")
    rep = fp16.search_fp16(fp32_graph, out, sets["images"], budget=budget, reference=sets["ref"], margin=1.0)
    assert rep["error_all_fp16"]["max"] == pytest.approx(plain, rel=1e-6) and plain > budget
    assert rep["ok"] and rep["kept_fp32"], rep["message"]
    err = _max_err(_ort_probs(out, sets["images"]), sets["ref"])
    assert err <= budget and rep["error_final"]["max"] == pytest.approx(err, rel=1e-6, abs=1e-9)
    m, types = _check_graph(out, sum(n.op_type == "Conv" for n in g.node))
    assert set(types) == {onnx.TensorProto.FLOAT16}
    # What the report says it kept is what the graph holds: those nodes' outputs are float32.
    inferred = onnx.shape_inference.infer_shapes(m)
    vt = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    kept = {name for k in rep["kept_fp32"] for name in k["nodes"]}
    for n in m.graph.node:
        if n.name in kept:
            assert all(vt.get(o, onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT for o in n.output), n.name
    assert all(k["error_alone"] > 0 for k in rep["kept_fp32"])


def test_an_unreachable_budget_fails_with_a_clear_message(fp32_graph, sets):
    # fp32 ONNX Runtime against PyTorch differs by about 1e-7: a 1e-12 budget cannot be met.
    one = {"real": sets["images"]["real"][:2]}
    rep = fp16.search_fp16(fp32_graph, None, one, budget=1e-12, reference={"real": sets["ref"]["real"][:2]})
    assert not rep["ok"]
    assert "unreachable" in rep["message"] and "convolutions stay fp32" in rep["message"]
    assert rep["convs_in_fp32"] and rep["conv_fp16_fraction"] < 1.0


def test_convert_keeps_the_named_nodes_and_refuses_unknown_ones(fp32_graph, sets):
    g = onnx.load(fp32_graph).graph
    gemm = next(n.name for n in g.node if n.op_type == "Gemm")
    m = fp16.convert_fp16(fp32_graph, keep_fp32=[gemm])
    onnx.checker.check_model(m, full_check=True)
    prec = fp16.precision_of(m)
    assert prec[gemm] == "fp32"
    assert prec[next(n.name for n in g.node if n.op_type == "Conv")] == "fp16"
    with pytest.raises(ValueError, match="does not have"):
        fp16.convert_fp16(fp32_graph, keep_fp32=["no_such_node"])
    with pytest.raises(ValueError, match=r"\[n, 3, S, S\]"):
        fp16.search_fp16(fp32_graph, None, np.zeros((3, 64, 64), np.float32))


def test_export_cli_fp16_runs_the_search_and_records_it(tmp_path, capsys):
    """``export --fp16`` writes the searched graph: its sidecar carries the search's summary, its check passes."""
    out = tmp_path / "m.onnx"
    rc = ex.main(["--model", "srdl", "--num-classes", "3", "--backbone", "resnet18", "--image-size", "32",
                  "--onnx", str(out), "--fp16", "--opt-batch", "2", "--max-batch", "4"])
    text = capsys.readouterr().out
    assert rc == 0, text
    side = json.load(open(str(tmp_path / "m.fp16.onnx") + ".json"))
    assert side["precision"] == "fp16" and side["fp16"]["method"]
    assert side["fp16"]["error"] <= side["fp16"]["budget"] == deploy.TOLERANCE["fp16"]
    assert "fp16 search:" in text and "onnx fp16" in text and "FAILED" not in text
    import onnx

    g = onnx.load(str(tmp_path / "m.fp16.onnx"))
    assert g.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in g.graph.initializer)
