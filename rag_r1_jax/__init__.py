"""rag_r1_jax: RAG-R1 (multi-query parallel retrieval inside RL) in JAX / Flax NNX."""

__version__ = "0.1.0"
