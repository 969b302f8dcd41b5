"""calibrate_batchnorm: a random model's BatchNorm statistics from random images, as training sets them.

Export times random models (``--model`` without ``--checkpoint``); in eval mode their BatchNorm layers
normalise with mean 0 and variance 1 whatever the activations are, so a deep one overflows float16.
"""

import warnings

import pytest
import torch
import torch.nn as nn

from fastmlr.models import create_model
from fastmlr.models.base import calibrate_batchnorm

FP16_MAX = 65504.0


def _random(name, backbone, classes=5):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_model(name, classes, backbone=backbone, weights="none").eval()


def _max_activation(model, x):
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o.abs().max().item()))
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return max(seen)


def test_the_first_layer_holds_its_input_batch_statistics():
    model = _random("baseline", "resnet18")
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    seen = []
    hook = bn.register_forward_pre_hook(lambda m, i: seen.append(i[0].detach().double()))
    assert calibrate_batchnorm(model, 64, num_images=2, seed=3) == sum(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    hook.remove()
    x = seen[0]  # N, C, H, W: the statistics BatchNorm keeps, by hand (unbiased variance, as torch stores it)
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = x.mean(dim=(0, 2, 3))
    var = ((x - mean[None, :, None, None]) ** 2).sum(dim=(0, 2, 3)) / (n - 1)
    torch.testing.assert_close(bn.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var.double(), var, rtol=1e-4, atol=1e-6)
    assert not model.training and not bn.training and bn.momentum == 0.1  # left as it was found


def test_a_random_resnet101_srdl_stays_inside_float16():
    model = _random("srdl", "resnet101")
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    before = _max_activation(model, x)
    calibrate_batchnorm(model, 224)
    after = _max_activation(model, x)
    assert before > FP16_MAX > 100 * after, (before, after)


def test_past_the_tolerance_both_are_held_to_the_float64_twin():
    """verify's fp32 rule: PyTorch's fp32 probabilities and the runtime's, each against the float64 twin."""
    from fastmlr.deploy.verify import fp32_against_float64, torch_probs, torch_probs64

    model = _random("baseline", "resnet18")
    calibrate_batchnorm(model, 64)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    p32 = torch_probs(model, x)
    p64 = torch_probs64(model, x)
    assert p64.dtype == torch.float64 and next(model.parameters()).dtype == torch.float32  # a copy went to float64
    own = (p32.double() - p64).abs().max().item()
    assert 0 < own < 1e-5  # fp32 rounding of a small network: present, and small
    runtime = p64 + 3 * own  # a runtime three times as far from the exact result
    got = fp32_against_float64(model, x, runtime, p32, 1e-4)
    # max_abs_diff works in float32: each figure is off by at most a float32 spacing near 1 (1.2e-7) from the
    # float64 one, whatever own's size on this CPU.
    spacing = 1.2e-7
    assert got["own"] == pytest.approx(own, abs=spacing) and got["artefact"] == pytest.approx(3 * own, abs=spacing)
    assert got["bound"] == 1e-4
    tight = fp32_against_float64(model, x, runtime, p32, own / 10)
    assert tight["bound"] == 2 * tight["own"] and tight["own"] == pytest.approx(own, abs=spacing)


@pytest.mark.parametrize("times_own, ok", [(1.5, True), (3.0, False)])
def test_the_aoti_check_holds_a_package_to_the_float64_twin_past_the_tolerance(monkeypatch, times_own, ok):
    """verify_aoti: past the fixed tolerance, a package may be as far from the float64 twin as twice PyTorch's
    own fp32 error (a frozen CPU package sums its packed convolutions in another order). The package's outputs
    here are the twin's shifted by a chosen multiple of that error; the tolerance is set below it so that the
    rule decides; the printed report names both errors."""
    from fastmlr.deploy import aoti, pipeline, verify

    model = _random("baseline", "resnet18")
    calibrate_batchnorm(model, 64)
    x = aoti.example_images(64, 3)
    own = verify.max_abs_diff(verify.torch_probs(model, x), verify.torch_probs64(model, x))
    assert own > 2.5e-7  # several float32 spacings near the probabilities (6e-8): the shifts below stay apart
    monkeypatch.setitem(verify.TOLERANCE, "fp32", own / 10)
    monkeypatch.setattr(aoti, "load_package", lambda path: (
        lambda images: (None, verify.torch_probs64(model, images) + times_own * own)))
    rep = aoti.verify_aoti("package.pt2", model, 64, max_batch=3)
    assert rep["ok"] is ok
    past = rep["against_float64"]["random"]
    assert past["bound"] == pytest.approx(2 * own, rel=1e-2)
    assert past["artefact"] == pytest.approx(times_own * own, abs=1.2e-7)  # two float32 spacings
    printed = pipeline.format_report(rep)
    assert f"this artefact {past['artefact']:.2e}, PyTorch fp32 {past['own']:.2e}" in printed
