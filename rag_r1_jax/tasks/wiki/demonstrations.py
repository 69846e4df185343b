"""Scripted demonstrations for the Wikipedia-extract questions (tasks/wiki/questions.py).

Stage 1 (format SFT) for a real pretrained model: the paper distils trajectories from a 72B
model; here a script knows which article answers each description, searches for it through
the run's own retriever and answers with the title, in the paper's format. sq searches one
description per call; mq searches all of a question's descriptions in one call. The
observation text is built by `observation.information_block` from the ACTUAL results, so it
is exactly what the rollout engine inserts. A question is dropped when the engine's parser
would not read the script's queries back as written (a description with quotes or brackets),
or when a search missed a gold article (or the observation lost its title to truncation).
"""

from typing import Literal, Sequence

from rag_r1_jax.tasks.demonstrations import Segment, answer_segment, search_segment
from rag_r1_jax.tasks.wiki.questions import WikiQuestion, search_query
from rag_r1_jax.retrieval.base import Retriever
from rag_r1_jax.rollout import observation, search_call


def _rounds(q: WikiQuestion, mode: str) -> list[list[int]]:
  """The article indices searched per call: all at once (mq) or one per call (sq)."""
  if mode == "mq":
    return [list(range(len(q.titles)))]
  return [[k] for k in range(len(q.titles))]


def _described_as(q: WikiQuestion, ks: Sequence[int]) -> str:
  return " and ".join(f'"{q.descriptions[k]}"' for k in ks)


def _parses_back(q: WikiQuestion, mode: str, max_query_chars: int) -> bool:
  """Whether the engine reads each of the script's search calls as the queries it wrote."""
  for ks in _rounds(q, mode):
    names = tuple(search_query(q.descriptions[k]) for k in ks)
    action = search_call.parse_action(search_segment("", names).text, mode=mode,
                                      max_queries_per_call=len(names),
                                      max_query_chars=max_query_chars)
    if action.kind != "search" or action.queries != names or action.problem:
      return False
  return True


def trajectories(questions: Sequence[WikiQuestion], retriever: Retriever, *,
                         mode: Literal["mq", "sq"], topk: int,
                         truncate: observation.Truncate | None = None,
                         max_obs_length: int = 1000, json_indent: int = 2,
                         max_query_chars: int = 512) -> list[list[Segment] | None]:
  """One trajectory per question (None where it is dropped: see the module docstring).

  Retrieval is batched: round r of every question still searching is one `retrieve` call.
  """
  plans = [_rounds(q, mode) for q in questions]
  out: list[list[Segment] | None] = [
      [] if _parses_back(q, mode, max_query_chars) else None for q in questions]
  found: list[list[str]] = [[] for _ in questions]
  for r in range(max((len(p) for p in plans), default=0)):
    active = [i for i, p in enumerate(plans) if r < len(p) and out[i] is not None]
    queries = [search_query(questions[i].descriptions[k]) for i in active for k in plans[i][r]]
    results = retriever.retrieve(queries, topk) if queries else []
    offset = 0
    for i in active:
      q, ks = questions[i], plans[i][r]
      names = [search_query(q.descriptions[k]) for k in ks]
      docs = results[offset:offset + len(ks)]
      offset += len(ks)
      info = observation.information_block(names, docs, mode, truncate, max_obs_length,
                                           json_indent=json_indent)
      if any(all(d.id != q.doc_ids[k] for d in hits) or q.titles[k] not in info
             for k, hits in zip(ks, docs)):
        out[i] = None
        continue
      thought = "; ".join(found[i] + [f"I need the article described as {_described_as(q, ks)}"])
      out[i] += [search_segment(thought, names), Segment(info, "information")]
      found[i] = found[i] + [f"{_described_as(q, [k])} is {q.titles[k]}" for k in ks]
  for i, q in enumerate(questions):
    if out[i] is not None:
      out[i].append(answer_segment("; ".join(found[i]), q.golden_answers[0]))
  return out


def sft_examples(config, arts, retriever: Retriever, truncate: observation.Truncate,
                 prompt_variant: str) -> list[tuple[str, list[Segment]]]:
  """(user prompt text, segments) for every train question the script solves, both kinds,
  searched through the run's `retriever`."""
  from rag_r1_jax.data import prompts
  from rag_r1_jax.tasks.wiki import questions as wiki_questions
  kept, counts = [], []
  for kind in wiki_questions.KINDS:
    questions = wiki_questions.wiki_questions(arts, "train", kind)
    solved = trajectories(
        questions, retriever, mode=config.rollout.mode, topk=config.retrieval.topk,
        truncate=truncate, max_obs_length=config.rollout.max_obs_length,
        json_indent=config.rollout.mq_json_indent,
        max_query_chars=config.rollout.max_query_chars)
    solved = [(prompts.build_prompt(q.question, prompt_variant), t)
              for q, t in zip(questions, solved) if t is not None]
    kept += solved
    counts.append(f"{kind} {len(solved)}/{len(questions)}")
  print(f"sft: demonstrations solved {', '.join(counts)} train questions (the rest: a search "
        "missed a gold article, or a description does not parse back as a query)", flush=True)
  return kept
