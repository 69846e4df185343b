"""Session fixtures shared by the retrieval tests: the MiniLM encoder, a mesh, wiki subsets."""

import ml_collections
import pytest

from rag_r1_jax import sharding
from rag_r1_jax.retrieval import corpus, encoder
from tests.conftest import require_asset

# The wiki-extract tests use every WIKI_STRIDE-th article (1,004 of 10,033), each truncated to
# WIKI_MAX_LENGTH tokens: encoding all 10k on 2 shared cores takes minutes.
WIKI_STRIDE = 10
WIKI_MAX_LENGTH = 128


@pytest.fixture(scope="session")
def mesh():
  """A data-parallel mesh over the 8 fake CPU devices."""
  return sharding.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1}))


@pytest.fixture(scope="session")
def minilm_dir():
  return require_asset("minilm_dir")


@pytest.fixture(scope="session")
def minilm(minilm_dir, mesh):
  """all-MiniLM-L6-v2 (mean pooling, normalised), data-parallel over the mesh."""
  spec = encoder.infer_spec(minilm_dir, max_length=WIKI_MAX_LENGTH)
  return encoder.SentenceEncoder.from_pretrained(minilm_dir, spec, mesh=mesh)


@pytest.fixture(scope="session")
def wiki_articles():
  return corpus.read_wiki_extracts(require_asset("wiki_extracts"))


@pytest.fixture(scope="session")
def wiki_subset(wiki_articles):
  """The deterministic article subset: every WIKI_STRIDE-th article, in file order."""
  return wiki_articles[::WIKI_STRIDE]


@pytest.fixture(scope="session")
def wiki_passage_embeddings(minilm, wiki_subset):
  """[1004, 384] MiniLM embeddings of the subset's documents (title + lead), encoded once."""
  docs = corpus.wiki_documents(wiki_subset)
  return minilm.encode_passages([d.contents for d in docs])


@pytest.fixture(scope="session")
def wiki_queries(wiki_subset):
  """(descriptions, target rows): each subset article with a description is one query."""
  rows = [i for i, a in enumerate(wiki_subset) if a.description]
  return [wiki_subset[i].description for i in rows], rows


@pytest.fixture(scope="session")
def wiki_query_embeddings(minilm, wiki_queries):
  """[num_queries, 384] MiniLM embeddings of the descriptions."""
  return minilm.encode_queries(wiki_queries[0])
