"""The model a training run builds from its flags: backbone weights, label embeddings, options, label graph."""

from __future__ import annotations

from . import train_args
from .engine import UsageError


def _resolve_weights(args) -> str | None:
    if args.weights is not None:
        return args.weights
    from .models.backbones import offline_imagenet_weights

    return "imagenet" if offline_imagenet_weights(args.backbone) else None


def _embeddings(args, classes, log):
    from .labels import default_embeddings, load_embeddings

    if args.embeddings is not None:
        return load_embeddings(list(classes), args.embeddings)
    emb, args.embeddings, note = default_embeddings(list(classes))  # recorded in args.json and the checkpoint
    if note:
        log(note)
    return emb


def model_cfg(args, classes, train_ds=None, log=print) -> dict:
    from .models import model_info

    info = model_info(args.model)
    cfg = dict(backbone=args.backbone, weights=_resolve_weights(args))
    if info.label_embeddings:
        cfg["embeddings"] = _embeddings(args, classes, log)
    if args.ablation is not None:
        cfg["ablation"] = args.ablation
    # The model options its registry entry declares, from the flags that were given (checked in train_args).
    for option, (_flag, value) in train_args.OPTION_FLAGS.items():
        if option in info.options and value(args) is not None:
            cfg[option] = value(args)
    adjacency = args.adjacency or info.defaults.get("adjacency", "learned")  # check_args resolves it first
    if adjacency != "learned":
        from .cooccurrence import dataset_cooccurrence, load_adjacency

        if adjacency == "cooccurrence":
            cfg["adjacency"] = dataset_cooccurrence(train_ds)
        else:
            cfg["adjacency"] = load_adjacency(adjacency, classes)
    return cfg


def check_same_model(model, ckpt) -> None:
    """On --resume the restored flags must rebuild the checkpoint's model (ablation, options, embedding size)."""
    have, want = ckpt["config"], model.config
    diffs = [
        f"{k}: checkpoint {have[k]!r}, now {want[k]!r}"
        for k in sorted(set(have) & set(want) - {"backend", "weights"})
        if have[k] != want[k]
    ]
    if diffs:
        raise UsageError(
            f"--resume: {ckpt['path']} was trained with another model configuration ({'; '.join(diffs)}) "
            f"than its recorded flags rebuild; start a new run in another --out"
        )
