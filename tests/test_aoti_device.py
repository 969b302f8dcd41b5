"""AOTInductor packages for a CUDA GPU as well as the CPU (fastmlr.deploy.aoti ``device``), and the bench's
``aoti`` column on CUDA.

Without a GPU: the device is checked before anything is traced or written. With one (``gpu``): a small
SRDL is compiled for CUDA, loaded by fastmlr.runtime on CUDA, and matches PyTorch within the fp32 tolerance.
"""

from __future__ import annotations

import json

import pytest
import torch

from fastmlr import deploy, runtime
from fastmlr.bench.runtimes import RUNTIMES
from fastmlr.deploy.aoti import AOTI_DEVICES, check_device
from fastmlr.models import create_model

SIZE = 64


def _model():
    torch.manual_seed(0)
    m = create_model("srdl", 3, backbone="resnet18", weights="none", use_oe=False).eval()
    m.class_names = ["a", "b", "c"]
    return m


def test_unknown_device_is_refused_by_name():
    with pytest.raises(ValueError, match="one of cpu, cuda, got 'mps'"):
        check_device("mps")
    assert AOTI_DEVICES == ("cpu", "cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where there is no GPU")
def test_cuda_package_without_gpu_is_refused_before_anything_is_written(tmp_path):
    model = _model()
    path = tmp_path / "m.pt2"
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        deploy.export_aoti(model, str(path), SIZE, max_batch=2, device="cuda")
    assert list(tmp_path.iterdir()) == []
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_bench_aoti_column_runs_on_either_device():
    aoti = RUNTIMES["aoti"]
    assert set(aoti.devices) == {"cpu", "cuda"}
    if not torch.cuda.is_available():
        assert "CUDA GPU" in aoti.why_not(torch.device("cuda"))


@pytest.mark.gpu
@pytest.mark.slow
def test_cuda_package_matches_pytorch_on_the_gpu(tmp_path):
    model = _model()
    path = str(tmp_path / "m.pt2")
    deploy.export_aoti(model, path, SIZE, max_batch=4, device="cuda")
    side = json.loads(open(path + ".json").read())
    assert side["device"] == "cuda"
    r = runtime.load(path)
    assert r.provider.endswith("cuda")
    x = torch.rand(3, 3, SIZE, SIZE)
    with torch.no_grad():
        want = torch.sigmoid(model.cuda()(x.cuda()).float()).cpu()
    assert (r.predict(x).cpu() - want).abs().max() <= deploy.verify.TOLERANCE["fp32"]
    assert deploy.verify_aoti(path, model, SIZE)["ok"]
