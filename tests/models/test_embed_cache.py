"""The sentence-transformers embedder's fast path with the real MiniLM: length-sorted batches
that give the same vectors as sentence-transformers' own ``encode``, each text embedded once per
process (memo keyed by model fingerprint, dtype and text hash) and once per data root (disk)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from curation.models import BackendConfig, build_backend
from curation.models.config import CPU_FLAGS_ENV
from curation.models.embedder import SentenceTransformerBackend, token_batches
from curation.models.memo import EMBEDDINGS, EmbeddingStore, VectorMemo, text_digest

pytestmark = pytest.mark.usefixtures("torch_threads")  # tests/model_fixtures.py

MINILM = BackendConfig(backend="sentence_transformers", model="all-MiniLM-L6-v2", batch_size=8, threads=1)
TEXTS = [
    "How do I bake a loaf of bread at home?",
    "What is the way to make homemade bread?",
    "The stock market fell sharply on Tuesday.",
    "ok",
    "How do I bake a loaf of bread at home?",  # a repeat: embedded once
    " ".join(["a long text that runs past the model's 256 word pieces"] * 40),
    "Ünïcödé and emoji 🍞 count too.",
]


@pytest.fixture(autouse=True)
def fresh_memo(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(CPU_FLAGS_ENV, "fpu avx2")  # auto -> float32 on every machine
    EMBEDDINGS.clear()
    yield
    EMBEDDINGS.clear()


def _backend(root: Path, **cfg: object) -> SentenceTransformerBackend:
    backend = build_backend(MINILM.model_copy(update=cfg), root)
    assert isinstance(backend, SentenceTransformerBackend)
    return backend


def test_vectors_equal_sentence_transformers_own_and_each_text_is_embedded_once(tmp_path: Path) -> None:
    first = _backend(tmp_path)
    vectors = first.embed(TEXTS)
    assert vectors.shape == (len(TEXTS), 384) and vectors.dtype == np.float32
    assert first.computed == len(set(TEXTS)) and first.describe()["dtype"] == "float32"
    reference = first._st.encode(TEXTS, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(vectors, reference, atol=2e-6)  # the sorted batches change nothing but rounding
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    again = first.embed(TEXTS[::-1])  # the memo, in any order
    assert first.computed == len(set(TEXTS)) and np.array_equal(again, vectors[::-1])

    other = _backend(tmp_path / "empty-root")  # another backend in the same process: the memo, not the disk
    assert np.array_equal(other.embed(TEXTS), vectors) and other.computed == 0
    assert not (tmp_path / "empty-root").exists()
    assert other._st is None  # nothing to compute, so the model never loaded

    EMBEDDINGS.clear()  # a new process over the same data root: from disk
    rerun = _backend(tmp_path)
    assert np.array_equal(rerun.embed(TEXTS), vectors) and (rerun.computed, rerun._st) == (0, None)
    store = sorted((tmp_path / "cache" / "embeddings").glob("*/*.npy"))
    assert len(store) == 2 and not list((tmp_path / "cache" / "embeddings").glob("*/.*"))  # one shard, no temp files

    EMBEDDINGS.clear()
    elsewhere = _backend(tmp_path / "other-root")  # another data root has its own store
    assert np.allclose(elsewhere.embed(TEXTS[:2]), vectors[:2], atol=1e-6) and elsewhere.computed == 2


def test_a_damaged_shard_is_ignored_and_the_texts_embedded_again(tmp_path: Path) -> None:
    vectors = _backend(tmp_path).embed(TEXTS[:3])
    (vecs,) = (tmp_path / "cache" / "embeddings").glob("*/*.vecs.npy")
    vecs.write_bytes(vecs.read_bytes()[:100])  # truncated by a full disk, say
    EMBEDDINGS.clear()
    again = _backend(tmp_path)
    np.testing.assert_allclose(again.embed(TEXTS[:3]), vectors, atol=1e-6)
    assert again.computed == 3


def test_the_dtype_is_part_of_the_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bf16 machine and an fp32 one never share vectors (auto resolves per machine)."""
    fp32 = _backend(tmp_path)
    monkeypatch.setenv(CPU_FLAGS_ENV, "avx512f avx512_bf16 amx_bf16")
    bf16 = _backend(tmp_path)
    assert (fp32.dtype, bf16.dtype) == ("float32", "bfloat16") and fp32.fingerprint != bf16.fingerprint
    short = TEXTS[:4]  # bf16 is emulated (slow) on CPUs without AMX
    a, b = fp32.embed(short), bf16.embed(short)
    assert bf16.computed == len(short) and b.dtype == np.float32
    cosines = (a * b).sum(axis=1)
    assert cosines.min() > 0.99  # measured 0.998 at worst on 300 real responses (AMD EPYC, emulated bf16)
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)  # normalised in float32


def test_token_batches_bound_padding_and_rows() -> None:
    lengths = [5, 256, 12, 12, 300, 7, 64, 64, 64, 1]
    batches = token_batches(lengths, max_rows=3, budget=200)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 200)
        assert [lengths[i] for i in b] == sorted(lengths[i] for i in b)
    assert token_batches([], 4) == []


def test_the_memo_is_bounded_least_recently_used_first() -> None:
    memo = VectorMemo(max_bytes=3 * 16)  # three 4-float vectors
    keys = [text_digest(str(i)) for i in range(4)]
    memo.put("m", keys[:3], np.ones((3, 4), dtype=np.float32))
    assert set(memo.get("m", keys[:1])) == {keys[0]}  # 0 is now the most recently used
    memo.put("m", keys[3:], np.zeros((1, 4), dtype=np.float32))
    assert set(memo.get("m", keys)) == {keys[0], keys[2], keys[3]} and memo.bytes == 48
    assert memo.get("other-model", keys) == {}  # keyed by model fingerprint too


def test_the_store_writes_whole_shards(tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path, "fp")
    keys = [text_digest(t) for t in ("x", "y", "x")]
    store.put(keys, np.arange(12, dtype=np.float32).reshape(3, 4))
    assert len(list((tmp_path / "fp").glob("*.keys.npy"))) == 1
    found = EmbeddingStore(tmp_path, "fp").get(keys)
    assert set(found) == set(keys) and found[keys[1]].tolist() == [4.0, 5.0, 6.0, 7.0]
    store.put(keys[:2], np.zeros((2, 4), dtype=np.float32))  # nothing new: no new shard
    assert len(list((tmp_path / "fp").glob("*.keys.npy"))) == 1


def test_an_unwritable_store_costs_the_cache_not_the_run(tmp_path: Path) -> None:
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    backend = _backend(tmp_path)
    vectors = backend.embed(TEXTS[:2])
    assert vectors.shape == (2, 384) and backend.computed == 2 and backend.store_root is None
    assert np.array_equal(backend.embed(TEXTS[:2]), vectors) and backend.computed == 2  # still the memo
