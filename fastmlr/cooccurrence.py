"""python -m fastmlr.cooccurrence: ML-GCN's label correlation matrix from a dataset's training labels.

    python -m fastmlr.cooccurrence --data voc --data-root VOCdevkit/VOC2007 --out adj.pt
    python -m fastmlr.cooccurrence --data scenes --train-size 4000 --out adj.pt --tau 0.4 --p 0.2

Counts ``M[i, j]`` (images holding labels i and j; ``M[i, i] = N_i``, images
holding i; ignored labels count as absent) give ``P(L_j | L_i) = M_ij / N_i``;
ML-GCN (Chen et al., CVPR 2019, section 3.4) binarises it at ``tau`` and
re-weights each row so a label keeps ``1 - p`` and gives ``p`` to its neighbours
(:func:`fastmlr.models.graph.reweighted_correlation`). The file (``torch.load``)
holds ``counts``, ``probabilities``, ``reweighted`` (A'), ``normalized``
(``D^-1/2 A' D^-1/2``, what ML-GCN's GCN multiplies by), ``classes``,
``num_images``, ``tau`` and ``p``. ``python -m fastmlr.train --adjacency FILE``
(or ``cooccurrence``, which computes the same from the training split) uses it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import sys

import torch

from .files import atomic_write_bytes

DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "fastmlr", "cooccurrence")


def label_cooccurrence(targets: torch.Tensor, ignore: torch.Tensor | None = None) -> torch.Tensor:
    """Co-occurrence counts (Tensor[C, C] float64) of a label matrix (Tensor[N, C] in {0, 1})."""
    t = torch.as_tensor(targets, dtype=torch.float64)
    if t.dim() != 2:
        raise ValueError(f"targets must be an N x C label matrix, got shape {tuple(t.shape)}")
    if ignore is not None:
        t = t.masked_fill(torch.as_tensor(ignore, dtype=torch.bool), 0.0)
    return (t > 0.5).to(torch.float64).T @ (t > 0.5).to(torch.float64)


def dataset_cooccurrence(ds, cache_dir: str | None = DEFAULT_CACHE) -> torch.Tensor:
    """Counts of a fastmlr dataset's labels (its ``targets()``), cached in ``cache_dir`` by content.

    The cache key is a hash of the targets, so a changed dataset never reuses an old matrix;
    ``cache_dir=None`` computes without caching.
    """
    if not hasattr(ds, "targets"):
        raise ValueError(f"{type(ds).__name__} has no targets(): cannot count its labels")
    targets = ds.targets()
    if cache_dir is None:
        return label_cooccurrence(targets)
    key = hashlib.sha256(targets.to(torch.uint8).numpy().tobytes() + str(tuple(targets.shape)).encode()).hexdigest()[:20]
    path = os.path.join(cache_dir, f"counts-{key}.pt")
    if os.path.exists(path):
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if blob.get("key") == key:
                return blob["counts"]
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:  # recomputed, not trusted
            print(f"cooccurrence: cache {path} unreadable ({type(e).__name__}); recomputing it", file=sys.stderr)
    counts = label_cooccurrence(targets)
    atomic_write_bytes(path, lambda fh: torch.save({"key": key, "counts": counts}, fh))
    return counts


def correlation_file(counts: torch.Tensor, classes, tau: float = 0.4, p: float = 0.2) -> dict:
    """Everything ``--out`` holds, from counts."""
    from .models.graph import conditional_probabilities, correlation_matrix, reweighted_correlation

    return {
        "counts": counts, "probabilities": conditional_probabilities(counts),
        "reweighted": reweighted_correlation(counts, tau, p), "normalized": correlation_matrix(counts, tau, p),
        "classes": list(classes), "num_images": None, "tau": float(tau), "p": float(p),
    }


def load_adjacency(path: str, classes) -> torch.Tensor:
    """The counts of a ``--out`` file, checked against the classes they are for."""
    if not os.path.exists(path):
        raise SystemExit(f"--adjacency {path}: file does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise SystemExit(f"--adjacency {path}: cannot be read ({type(e).__name__}: {e})") from None
    if not isinstance(blob, dict) or "counts" not in blob:
        raise SystemExit(f"--adjacency {path}: not a file of python -m fastmlr.cooccurrence (no 'counts')")
    if list(blob.get("classes", [])) != list(classes):
        raise SystemExit(f"--adjacency {path}: made for classes {blob.get('classes')}, the data has {list(classes)}")
    return blob["counts"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastmlr.cooccurrence", description=__doc__.splitlines()[0])
    p.add_argument("--data", default="mosaics", help="mosaics | scenes | voc | coco | list")
    p.add_argument("--data-root", default=None, help="dataset folder (voc, coco), JSONL file (list), idx folder")
    p.add_argument("--classes-file", default=None, help="class names, one per line (list format)")
    p.add_argument("--split", default=None, help="default: trainval (voc), train (others)")
    p.add_argument("--train-size", type=int, default=4000, help="mosaics, scenes: number of training images")
    p.add_argument("--seed", type=int, default=0, help="mosaics, scenes: the training set's seed")
    p.add_argument("--tau", type=float, default=0.4)
    p.add_argument("--p", type=float, default=0.2)
    p.add_argument("--out", required=True, help="output .pt file")
    p.add_argument("--cache-dir", default=DEFAULT_CACHE, help="where counts are cached ('' for no cache)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def main(argv=None) -> int:
    from .engine import run_command

    args = build_parser().parse_args(argv)
    return run_command(lambda: run(args), debug=args.debug)


def run(args) -> int:
    from .data import build_dataset
    from .files import check_distinct, check_replaceable

    check_replaceable(args.out, "--out")  # before the counting: a folder or a read-only file is refused now
    check_distinct([(args.out, "--out")], [(args.data_root, "--data-root"), (args.classes_file, "--classes-file")])
    kw = {}
    if args.data in ("mosaics", "scenes"):
        kw = dict(num_images=args.train_size, seed=args.seed)
    elif args.data == "list":
        kw = dict(classes_file=args.classes_file)
    split = args.split or ("trainval" if args.data == "voc" else "train")
    ds = build_dataset(args.data, args.data_root, split=split, image_size=32, train=False, **kw)
    counts = dataset_cooccurrence(ds, args.cache_dir or None)
    blob = correlation_file(counts, ds.classes, args.tau, args.p)
    blob["num_images"] = len(ds)
    atomic_write_bytes(args.out, lambda fh: torch.save(blob, fh))
    edges = int((blob["reweighted"] > 0).sum() - blob["reweighted"].shape[0])
    print(f"wrote {args.out}: {len(ds.classes)} classes, {len(ds)} images, {edges} edges at tau={args.tau}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
