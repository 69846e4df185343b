"""Encoder tests: parity with transformers (tiny BERT, real MiniLM), buckets, specs, resume."""

import json
import os

import numpy as np
import pytest
from flax import nnx

from rag_r1_jax.retrieval import bert, corpus, embeddings, encoder
from rag_r1_jax.retrieval.base import Document
from rag_r1_jax.retrieval.docstore import JsonlDocStore

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _torch_mean_pool(hidden, mask):
  m = mask[..., None].float()
  return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def test_tiny_random_bert_matches_transformers(tmp_path):
  cfg = transformers.BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=64,
                                max_position_embeddings=64)
  torch.manual_seed(0)
  ref = transformers.BertModel(cfg).eval()
  ref.save_pretrained(tmp_path)
  ours = bert.load_bert(str(tmp_path))
  assert ours.cfg.num_layers == 2 and ours.cfg.hidden_size == 32
  rng = np.random.default_rng(0)
  ids = rng.integers(1, 97, size=(3, 16)).astype(np.int32)  # [batch, seq]
  lengths = np.array([16, 9, 1])
  mask = (np.arange(16)[None] < lengths[:, None]).astype(np.int32)
  ids = ids * mask
  with torch.no_grad():
    t_ids, t_mask = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
    want = ref(input_ids=t_ids, attention_mask=t_mask).last_hidden_state
  got = np.asarray(ours(ids, mask))  # [3, 16, 32]
  valid = mask.astype(bool)
  np.testing.assert_allclose(got[valid], want.numpy()[valid], atol=2e-5, rtol=1e-5)
  mean = np.asarray(bert.sentence_embedding(ours, ids, mask, "mean", normalize=False))
  np.testing.assert_allclose(mean, _torch_mean_pool(want, t_mask).numpy(), atol=2e-5)
  cls = np.asarray(bert.sentence_embedding(ours, ids, mask, "cls", normalize=True))
  want_cls = torch.nn.functional.normalize(want[:, 0], dim=-1).numpy()
  np.testing.assert_allclose(cls, want_cls, atol=2e-5)
  np.testing.assert_allclose(np.linalg.norm(cls, axis=1), 1.0, atol=1e-6)


def test_loader_rejects_wrong_shapes_and_architectures(tmp_path):
  cfg = bert.BertConfig(vocab_size=10, hidden_size=8, num_layers=1, num_heads=2,
                        intermediate_size=16, max_position_embeddings=8)
  model = bert.BertModel(cfg, nnx.Rngs(0))
  with pytest.raises(ValueError, match="missing 'embeddings.word_embeddings.weight'"):
    bert.load_hf_weights(model, {})
  with pytest.raises(ValueError, match="model_type='roberta'"):
    bert.BertConfig.from_hf({"model_type": "roberta"})


def test_minilm_matches_transformers_on_100_real_sentences(minilm, minilm_dir, wiki_articles):
  sentences = [a.text.split(". ")[0] + "." for a in wiki_articles[3::100][:100]]
  assert len(sentences) == 100 and len(set(sentences)) == 100
  got = minilm.encode(sentences)  # [100, 384]
  tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
  ref = transformers.AutoModel.from_pretrained(minilm_dir, dtype=torch.float32).eval()
  with torch.no_grad():
    batch = tok(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")
    pooled = _torch_mean_pool(ref(**batch).last_hidden_state, batch["attention_mask"])
    want = torch.nn.functional.normalize(pooled, dim=-1).numpy()
  cos = (got * want).sum(axis=1)
  assert got.shape == (100, 384)
  assert cos.min() >= 0.9999, f"min cosine {cos.min()}"
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def _tiny_encoder(minilm, **spec_kwargs) -> encoder.SentenceEncoder:
  """A 1-layer random BERT behind MiniLM's tokenizer: cheap to run, real tokenisation."""
  cfg = bert.BertConfig(vocab_size=30522, hidden_size=16, num_layers=1, num_heads=2,
                        intermediate_size=32, max_position_embeddings=128)
  spec = encoder.EncoderSpec(max_length=64, **spec_kwargs)
  return encoder.SentenceEncoder(bert.BertModel(cfg, nnx.Rngs(1)), minilm.tokenizer, spec,
                                 "tiny", "0" * 64, batch_size=8)


def test_buckets_bound_compiles_and_do_not_change_results(minilm):
  assert [encoder.seq_bucket(n, 64, 16) for n in (1, 16, 17, 33, 49, 64, 100)] == [
      16, 16, 32, 48, 64, 64, 64]
  assert [encoder.seq_bucket(n, 100, 8) for n in (1, 9, 95, 97)] == [8, 16, 96, 100]
  assert [encoder.batch_bucket(n, 8, 1) for n in (1, 3, 5, 8)] == [1, 4, 8, 8]
  assert encoder.batch_bucket(3, 64, 8) == 8 and encoder.batch_bucket(9, 64, 8) == 16
  enc = _tiny_encoder(minilm)
  texts = [" ".join(["word"] * n) for n in range(1, 60, 3)]  # 20 texts, 3..61 tokens
  out = enc.encode(texts)
  single = np.stack([enc.encode([t])[0] for t in texts])
  np.testing.assert_allclose(out, single, atol=1e-5)
  # seq buckets {16, 32, 48, 64} x batch buckets {1, 4, 8} at most; under one per text.
  assert enc._fn._cache_size() <= 12
  assert enc.encode([]).shape == (0, 16)
  with pytest.raises(ValueError, match="seq_bucket"):
    encoder.SentenceEncoder(bert.BertModel(bert.BertConfig(num_layers=1), nnx.Rngs(0)),
                            minilm.tokenizer, encoder.EncoderSpec(), "x", "0", seq_bucket=0)


def test_fine_buckets_give_the_embeddings_of_one_padded_shape(minilm_dir, wiki_subset):
  """MiniLM on 96 real passages: batches padded to multiples of 16 tokens (the default) give
  the embeddings of every batch padded to max_length, i.e. the padding never leaks."""
  texts = [d.contents for d in corpus.wiki_documents(wiki_subset[:96])]
  spec = encoder.infer_spec(minilm_dir, max_length=128)
  fine = encoder.SentenceEncoder.from_pretrained(minilm_dir, spec, batch_size=32)
  padded = encoder.SentenceEncoder.from_pretrained(minilm_dir, spec, batch_size=32,
                                                   seq_bucket=128)
  got, want = fine.encode_passages(texts), padded.encode_passages(texts)
  np.testing.assert_allclose(got, want, atol=2e-6)
  assert {s for _, s in fine._compiled} < set(range(16, 129, 16)) and len(fine._compiled) > 1
  assert padded._compiled == {(32, 128)}


def test_encode_reports_tokenising_compiling_and_each_batch(minilm):
  enc = _tiny_encoder(minilm)  # batch_size 8
  texts = [" ".join(["word"] * n) for n in range(1, 41)]  # 40 texts, 3..42 tokens
  events = []
  enc.encode(texts, lambda done, status: events.append((done, status)))
  assert events[0] == (0, "tokenising 40 texts")
  compiles = [s for d, s in events if s.startswith("compiling")]
  assert compiles == ["compiling 8 x 16", "compiling 8 x 32", "compiling 8 x 48"]
  assert [d for d, _ in events if d] == [8] * 5  # every batch, as it finishes
  events.clear()
  enc.encode(texts, lambda done, status: events.append((done, status)))
  assert not [s for _, s in events if s.startswith("compiling")]  # shapes compile once


def test_remainder_batch_takes_the_shortest_texts(minilm):
  """20 texts in batches of 8: the 4 left over are the shortest, so their padding rows run at
  16 tokens rather than at the longest batch's 48."""
  enc = _tiny_encoder(minilm)  # batch_size 8
  texts = [" ".join(["word"] * n) for n in range(40, 0, -2)]  # 20 texts, 42..4 tokens
  events = []
  out = enc.encode(texts, lambda done, status: events.append((done, status)))
  compiles = [s for d, s in events if s.startswith("compiling")]
  assert compiles == ["compiling 4 x 16", "compiling 8 x 32", "compiling 8 x 48"]
  assert [d for d, _ in events if d] == [4, 8, 8]
  np.testing.assert_allclose(out, np.stack([enc.encode([t])[0] for t in texts]), atol=1e-5)


def test_encode_corpus_bar_announces_phases_and_ends_once(tmp_path, minilm, capfd):
  enc = _tiny_encoder(minilm)
  docs_list = [Document(str(i), f"T{i}", "word " * (i + 1)) for i in range(20)]
  path = str(tmp_path / "c.jsonl")
  corpus.write_corpus(docs_list, path)
  capfd.readouterr()
  embeddings.encode_corpus(enc, JsonlDocStore.build(path), str(tmp_path / "emb"), progress=True)
  lines = [x for x in capfd.readouterr().err.replace("\r", "\n").split("\n") if x.strip()]
  assert any("tokenising 20 texts" in x for x in lines)
  assert any("compiling 4 x 16" in x for x in lines)  # the 4 left over from batches of 8
  assert sum("20/20" in x for x in lines) == 1, lines


def test_query_and_passage_prefixes_are_applied(minilm):
  enc = _tiny_encoder(minilm, query_prefix="query: ", passage_prefix="passage: ")
  q = enc.encode_queries(["what is a cat"])
  np.testing.assert_allclose(q, enc.encode(["query: what is a cat"]), atol=1e-6)
  p = enc.encode_passages(["a cat"])
  np.testing.assert_allclose(p, enc.encode(["passage: a cat"]), atol=1e-6)
  assert not np.allclose(q, enc.encode(["what is a cat"]), atol=1e-3)


def test_infer_spec_from_model_directories(tmp_path, minilm_dir):
  spec = encoder.infer_spec(minilm_dir)
  assert spec == encoder.EncoderSpec(pooling="mean", normalize=True, max_length=256)
  e5 = tmp_path / "e5-base-v2"
  bge = tmp_path / "bge-large-en-v1.5"
  e5.mkdir(), bge.mkdir()
  assert encoder.infer_spec(str(e5)).query_prefix == "query: "
  assert encoder.infer_spec(str(e5)).passage_prefix == "passage: "
  b = encoder.infer_spec(str(bge))
  assert (b.pooling, b.query_prefix, b.passage_prefix) == ("cls", encoder.BGE_QUERY_INSTRUCTION, "")
  assert encoder.infer_spec(str(bge), pooling="mean", query_prefix=None).pooling == "mean"
  with pytest.raises(ValueError, match="pooling"):
    encoder.EncoderSpec(pooling="max")


def test_encode_corpus_resumes_from_saved_chunks(tmp_path, minilm, monkeypatch):
  enc = _tiny_encoder(minilm)
  docs_list = [Document(str(i), f"T{i}", f"passage number {i} " * (i % 5 + 1)) for i in range(10)]
  path = str(tmp_path / "c.jsonl")
  corpus.write_corpus(docs_list, path)
  docs = JsonlDocStore.build(path)
  out = str(tmp_path / "emb")
  manifest = embeddings.encode_corpus(enc, docs, out, chunk_rows=4, progress=False)
  assert manifest["rows"] == 10 and sorted(os.listdir(out)) == [
      "chunk_000000.npy", "chunk_000001.npy", "chunk_000002.npy", "manifest.json"]
  full = np.concatenate(list(embeddings.iter_chunks(out)))
  np.testing.assert_allclose(full, enc.encode_passages([d.contents for d in docs_list]), atol=1e-5)
  os.remove(os.path.join(out, "chunk_000001.npy"))  # as if killed while writing chunk 1
  calls = []
  original = enc.encode_passages
  monkeypatch.setattr(enc, "encode_passages",
                      lambda texts, progress: calls.append(len(texts)) or original(texts))
  embeddings.encode_corpus(enc, docs, out, chunk_rows=4, progress=False)
  assert calls == [4]  # only the missing chunk was encoded again
  np.testing.assert_allclose(np.concatenate(list(embeddings.iter_chunks(out))), full, atol=0)
  with pytest.raises(ValueError, match="chunk_rows"):
    embeddings.encode_corpus(enc, docs, out, chunk_rows=5, progress=False)
  with open(os.path.join(out, "manifest.json")) as f:
    assert json.load(f)["encoder_hash"] == enc.hash
