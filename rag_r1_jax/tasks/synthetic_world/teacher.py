"""A programmatic teacher that writes correct search trajectories for synthetic-world questions.

It plays the role of the paper's Qwen2.5-72B teacher: it knows the world's gold lookup plan,
issues the gold queries ('sq': one per search; 'mq': all queries of a round in one search), and
inserts the observation text built by `observation.information_block` from the ACTUAL results
of the given retriever, so the text is exactly what the rollout engine inserts. A trajectory
whose retrieved documents miss a needed fact is dropped (only correct ones are kept).

Policy segments look like `<think> need birth year </think><search> A, B </search>` and
`<think> A was born 1931; B was born 1925 </think><answer> B </answer>` (thoughts are
kept to a few words: sequence length is the CPU budget). World questions are never answered
without a search (`demonstrations.direct_answer` is for questions answered from memory).
"""

import random
from typing import Literal, Sequence

from rag_r1_jax import protocol as P
from rag_r1_jax.tasks.demonstrations import Segment, answer_segment, search_segment, thought
from rag_r1_jax.tasks.synthetic_world import world as synthetic_world
from rag_r1_jax.tasks.synthetic_world.world import FACT_NUMBERS, NEEDS, Question, World
from rag_r1_jax.retrieval.base import Document, Retriever
from rag_r1_jax.rollout import observation


def _need(lookups) -> str:
  """'need birth year' for a round of lookups (one attribute per round)."""
  return "need " + NEEDS[lookups[0].attribute]


def _grounded(world: World, lookups, docs_per_query: Sequence[Sequence[Document]],
              info: str) -> bool:
  """Every lookup's passage was retrieved and its value survived into the observation text."""
  for lookup, docs in zip(lookups, docs_per_query):
    gold_id = world.passage(lookup.entity).id
    if all(d.id != gold_id for d in docs) or world.value(lookup) not in info:
      return False
  return True


def teacher_trajectories(world: World, questions: Sequence[Question], retriever: Retriever, *,
                         mode: Literal["mq", "sq"], topk: int,
                         truncate: observation.Truncate | None = None,
                         max_obs_length: int = 1000,
                         json_indent: int = 2) -> list[list[Segment] | None]:
  """One trajectory per question (None where retrieval missed a needed fact).

  Retrieval is batched: round r of every question still searching is one `retrieve` call.
  """
  plans = [q.lookup_rounds(mode) for q in questions]
  trajectories: list[list[Segment] | None] = [[] for _ in questions]
  last_facts: list[list[str]] = [[] for _ in questions]
  for r in range(max((len(p) for p in plans), default=0)):
    active = [i for i, p in enumerate(plans) if r < len(p) and trajectories[i] is not None]
    queries = [lk.entity for i in active for lk in plans[i][r]]
    results = retriever.retrieve(queries, topk) if queries else []
    offset = 0
    for i in active:
      lookups = plans[i][r]
      docs = results[offset:offset + len(lookups)]
      offset += len(lookups)
      names = [lk.entity for lk in lookups]
      info = observation.information_block(names, docs, mode, truncate, max_obs_length,
                                           json_indent=json_indent)
      if not _grounded(world, lookups, docs, info):
        trajectories[i] = None
        continue
      thought = "; ".join(last_facts[i] + [_need(lookups)])
      trajectories[i] += [search_segment(thought, names), Segment(info, "information")]
      last_facts[i] = [world.fact(lk) for lk in lookups]
  for i, q in enumerate(questions):
    if trajectories[i] is not None:
      trajectories[i].append(answer_segment("; ".join(last_facts[i]), q.golden_answers[0]))
  return trajectories


def teacher_trajectory(world: World, question: Question, retriever: Retriever, *,
                       mode: Literal["mq", "sq"], topk: int,
                       truncate: observation.Truncate | None = None,
                       max_obs_length: int = 1000, json_indent: int = 2) -> list[Segment] | None:
  """The teacher's trajectory for one question, or None if retrieval missed a needed fact."""
  return teacher_trajectories(world, [question], retriever, mode=mode, topk=topk,
                              truncate=truncate, max_obs_length=max_obs_length,
                              json_indent=json_indent)[0]


def copy_drills(world: World, count: int, seed: int) -> list[tuple[str, list[Segment]]]:
  """`count` (user text, segments) drills: repeat a list of world names and numbers in order.

  Dense copy targets for a model trained from scratch, which otherwise sees only a few copied
  tokens per search trajectory (docs/experiment_log.md has what they did). Items are
  fresh combinations of the world's name words (60%) and numbers a world fact can state (40%,
  synthetic_world.FACT_NUMBERS): the very tokens a policy must copy out of a passage. Numbers
  off those grids split into other tokens and trained nothing the policy copies (the session-2
  policy copied names at 0.29 nats but numbers at 2.8).
  """
  if not world.name_pools:
    raise ValueError("copy drills need a world built by make_world (it has no name pools)")
  rng = random.Random(seed)
  pools = list(world.name_pools.values())

  def item() -> str:
    if rng.random() < 0.6:
      first, second = rng.choice(pools)
      return f"{rng.choice(first)} {rng.choice(second)}"
    return str(rng.choice(FACT_NUMBERS))

  out = []
  for _ in range(count):
    listed = ", ".join(item() for _ in range(rng.randint(2, 8)))
    out.append((f"Repeat: {listed}", [Segment(f"{P.ANSWER_OPEN} {listed} {P.ANSWER_CLOSE}", "policy")]))
  return out


def decision_drills(world: World, count: int, seed: int) -> list[tuple[str, list[Segment]]]:
  """`count` (user text, segments) drills: the last step of a comparison or fan-out answer.

  Each drill asks a comparison (two names) or fan-out (three) question of the world's kinds
  about fresh names with fresh values, gives the thought a teacher trajectory ends with
  ("A was born 1940; B was born 1925", in context, not trained) and trains only the answer:
  the whole name of the winner. Full trajectories train this decision once per question, at
  the end of ~200 tokens; a drill is ~40 tokens. Names combine the world's name words but are
  never one of its test or distractor names; the user text starts with "Decide:" and has no
  search instructions, so drills do not teach answering world questions without a search.
  """
  if not world.name_pools:
    raise ValueError("decision drills need a world built by make_world (it has no name pools)")
  rng = random.Random(seed)
  taken = {e.name for e in world.entities if e.split != "train"}
  pools = {}
  for kind in ("person", "city"):
    first, second = world.name_pools[kind]
    pools[kind] = [f"{a} {b}" for a in first for b in second if f"{a} {b}" not in taken]
  keys = sorted(synthetic_world.COMPARISONS)
  out = []
  for _ in range(count):
    key = rng.choice(keys)
    entity_type, smallest, pair_text, fan_text = synthetic_world.COMPARISONS[key]
    size = rng.choice((2, 3))
    names = rng.sample(pools["city" if entity_type is synthetic_world.City else "person"], size)
    values = rng.sample(synthetic_world.VALUE_GRIDS[key], size)
    winner = names[values.index((min if smallest else max)(values))]
    question = (pair_text if size == 2 else fan_text).format(*names)
    facts = "; ".join(synthetic_world.fact_text(key, n, synthetic_world.value_text(key, v))
                      for n, v in zip(names, values))
    out.append((f"Decide: {question}", [Segment(thought(facts), "information"),
                                        Segment(f"<answer> {winner} </answer>", "policy")]))
  return out


def sft_trajectories(config, retriever: Retriever, truncate: observation.Truncate,
                     prompt_variant: str) -> list[tuple[str, list[Segment]]]:
  """(user prompt text, segments) for stage 1: the teacher's solved train questions over
  `world.sft_draws` + 1 draws and the number questions of `world.number_draws` more, then the
  copy and decision drills.

  Draw 0 is the run's own world, searched through the run's `retriever`; fresh draws are
  searched exactly over their own passages. The teacher keeps only trajectories whose
  observation holds every needed fact, so with topk=1 the observation text is what the engine
  would insert; with more documents the others come from the draw.
  """
  from rag_r1_jax.data import prompts
  from rag_r1_jax.retrieval.base import ExactRetriever
  from rag_r1_jax.tasks.synthetic_world import draw_of, world_of
  settings = config.world
  world = world_of(config)
  kept, total = [], 0
  full_draws = settings.sft_draws + 1  # draws 0..sft_draws; number draws follow them
  for draw in range(full_draws + settings.number_draws):
    drawn = draw_of(config, draw)
    questions = drawn.split_questions("train")
    if draw >= full_draws:
      questions = [q for q in questions if q.reads_numbers()]
    trajectories = teacher_trajectories(
        drawn, questions, retriever if draw == 0 else ExactRetriever(drawn.passages),
        mode=config.rollout.mode, topk=config.retrieval.topk, truncate=truncate,
        max_obs_length=config.rollout.max_obs_length, json_indent=config.rollout.mq_json_indent)
    kept += [(prompts.build_prompt(q.question, prompt_variant), t)
             for q, t in zip(questions, trajectories) if t is not None]
    total += len(questions)
  draws = f" over {settings.sft_draws + 1} draws of the train split" if settings.sft_draws else ""
  if settings.number_draws:
    draws += f" and the number questions of {settings.number_draws} more"
  misses = retriever.stats.empty
  misses = f"; {misses} searches found no document" if misses else ""
  print(f"sft: teacher solved {len(kept)}/{total} train questions{draws} "
        f"(the rest lost a fact in retrieval{misses})", flush=True)
  if settings.copy_drills:
    kept += copy_drills(world, settings.copy_drills, config.seed)
    print(f"sft: + {settings.copy_drills} copy drills", flush=True)
  if settings.decision_drills:
    kept += decision_drills(world, settings.decision_drills, config.seed)
    print(f"sft: + {settings.decision_drills} decision drills", flush=True)
  return kept
