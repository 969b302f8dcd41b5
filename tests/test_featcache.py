"""Frozen-backbone training (fastmlr/featcache.py): cached maps are the backbone's, the cache is
reused and keyed by the data, and a head trained on it is the same model on images."""

from __future__ import annotations

import os
import warnings

import torch

from fastmlr import featcache
from fastmlr.data import FashionScenes
from fastmlr.models import create_model


def _model(name, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        return create_model(name, 10, backbone="resnet18", weights="none", **kw).eval()


def test_cache_holds_the_backbones_maps_and_is_reused(tmp_path):
    ds = FashionScenes("train", num_images=6, image_size=64, seed=0)
    m = _model("baseline")
    blob = featcache.load_or_compute(ds, m.backbone, None, str(tmp_path), log=lambda *a: None)
    files = os.listdir(tmp_path)
    assert len(files) == 1
    images = torch.stack([ds[i][0] for i in range(6)])
    with torch.no_grad():
        want = m.backbone.forward_stages(images)
    for got, w in zip(blob["stages"], want):
        assert got.dtype == torch.float16
        torch.testing.assert_close(got.float(), w, atol=2e-3 * float(w.abs().max()), rtol=1e-2)
    assert torch.equal(blob["targets"], ds.targets())
    again = featcache.load_or_compute(ds, m.backbone, None, str(tmp_path), log=lambda *a: None)
    assert torch.equal(again["stages"][2], blob["stages"][2]) and os.listdir(tmp_path) == files
    other = FashionScenes("train", num_images=6, image_size=64, seed=1)
    assert featcache.cache_key(other, "resnet18", None) != featcache.cache_key(ds, "resnet18", None)


def test_a_head_trained_on_the_cache_is_the_model_on_images(tmp_path):
    ds = FashionScenes("train", num_images=8, image_size=64, seed=0)
    for name, kw in (("srdl", dict(embeddings=torch.randn(10, 6), use_oe=True)), ("mmdsr", dict(embeddings=torch.randn(10, 6)))):
        m = _model(name, **kw)
        before = {k: v.clone() for k, v in m.backbone.state_dict().items()}
        blob = featcache.load_or_compute(ds, m.backbone, None, str(tmp_path), log=lambda *a: None)
        hist = featcache.train_head(m, blob, blob, epochs=2, lr=1e-3, batch_size=4, seed=0, eval_every=2,
                                    log=lambda *a: None)["history"]
        assert len(hist) == 2 and "val" not in hist[0] and "mAP" in hist[1]["val"]
        # The backbone is back, frozen and unchanged; the head learned.
        assert type(m.backbone).__name__ == "Backbone"
        assert all(torch.equal(v, before[k]) for k, v in m.backbone.state_dict().items())
        images = torch.stack([ds[i][0] for i in range(8)])
        with torch.no_grad():
            on_images = torch.sigmoid(m(images))
        real = m.backbone
        m.backbone = featcache.CachedBackbone(real)
        on_cache = featcache.predict_cached(m, blob)
        m.backbone = real
        torch.testing.assert_close(on_cache, on_images, atol=1e-2, rtol=0)
