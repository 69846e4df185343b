"""A small fictional world, generated from a seed, that a tiny model can only answer by searching.

People, companies and cities with made-up two-word names ("Stofa Rodo", "Nava Foods",
"Diler Hill") carry attributes (birth year, birth city, height, employer; founder, founding
year, headquarters; population). Each entity has one short passage titled with its name;
distractor entities sharing a name word with a real one fill the corpus but are never asked
about. Name words come from pools shared by both splits, and a test name only uses words that
train names use, so no test-only token exists (see world_tokenizer.py). Question kinds:
  single     one lookup                "In which city was X born?"
  bridge     two sequential lookups    "Who founded the company that X works for?"
  comparison two parallel lookups      "Who was born earlier, X or Y?"
  fanout     three parallel lookups    "Which of X, Y and Z is the tallest?"
Train and test questions are about disjoint entities (every hop stays inside its split), so
answers cannot be memorised. Each question carries its gold lookup plan: the queries a perfect
searcher issues (the entity names), grouped in rounds for 'mq'; in 'sq' each query is a round.
"""

import dataclasses
import json
import os
import random
from typing import Iterable, Literal

from rag_r1_jax.retrieval.base import Document

KINDS = ("single", "bridge", "comparison", "fanout")
SPLITS = ("train", "test")

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr",
           "st", "tr", "sh")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "", "n", "r", "l", "s")
_CITY_KINDS = ("Falls", "Bay", "Hill", "Harbor", "Springs")
# Attribute values lie on coarse grids so that each value is one frequent token (a model
# trained from scratch still copies numbers far worse than names: see copy_probe.py).
BIRTH_YEARS = tuple(range(1900, 1970, 5))
HEIGHTS_CM = tuple(range(150, 200, 3))
FOUNDING_DELAYS = (25, 30, 35, 40)
POPULATIONS_K = tuple(range(100, 1000, 25))
# Every number a world fact can state (birth and founding years, heights, populations).
FACT_NUMBERS = tuple(sorted({*BIRTH_YEARS, *HEIGHTS_CM, *POPULATIONS_K,
                             *(y + d for y in BIRTH_YEARS for d in FOUNDING_DELAYS)}))
_COMPANY_KINDS = ("Labs", "Works", "Group", "Motors", "Foods")
# The attributes whose values are numbers.
NUMBER_ATTRIBUTES = frozenset({"birth_year", "height_cm", "founded", "population_k"})


@dataclasses.dataclass(frozen=True)
class Person:
  name: str
  split: str  # train | test | distractor
  birth_year: int
  birth_city: str
  height_cm: int
  employer: str


@dataclasses.dataclass(frozen=True)
class Company:
  name: str
  split: str
  founded: int
  founder: str
  headquarters: str


@dataclasses.dataclass(frozen=True)
class City:
  name: str
  split: str
  population_k: int


Entity = Person | Company | City


@dataclasses.dataclass(frozen=True)
class Lookup:
  """One gold search: the query (the entity's name) and the attribute it is for."""
  entity: str
  attribute: str


@dataclasses.dataclass(frozen=True)
class Question:
  """A world question; `plan` is the gold lookups in 'mq' rounds."""
  id: str
  question: str
  golden_answers: tuple[str, ...]
  kind: str
  split: str
  plan: tuple[tuple[Lookup, ...], ...]

  def lookup_rounds(self, mode: Literal["mq", "sq"]) -> tuple[tuple[Lookup, ...], ...]:
    """The plan's rounds: as is in 'mq', one lookup per round in 'sq'."""
    if mode == "mq":
      return self.plan
    return tuple((lookup,) for round_ in self.plan for lookup in round_)

  def rounds(self, mode: Literal["mq", "sq"]) -> tuple[tuple[str, ...], ...]:
    """The gold queries, grouped in search rounds for `mode`."""
    return tuple(tuple(lk.entity for lk in r) for r in self.lookup_rounds(mode))

  def reads_numbers(self) -> bool:
    """Whether every lookup of the question reads a number (its answer rests on numbers)."""
    return all(lk.attribute in NUMBER_ATTRIBUTES for r in self.plan for lk in r)

  def row(self) -> dict:
    """The FlashRAG JSONL row: id, question, golden_answers."""
    return {"id": self.id, "question": self.question, "golden_answers": list(self.golden_answers)}


@dataclasses.dataclass
class World:
  """Entities, the passage corpus (one Document per entity) and the questions."""
  seed: int
  entities: tuple[Entity, ...]
  passages: tuple[Document, ...]
  questions: tuple[Question, ...]
  # The name-word pools every entity name is drawn from (kind -> (first words, second words)).
  name_pools: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = dataclasses.field(
      default_factory=dict, repr=False, compare=False)

  def __post_init__(self):
    self._by_name = {e.name: e for e in self.entities}
    self._passage_by_title = {d.title: d for d in self.passages}

  def entity(self, name: str) -> Entity:
    return self._by_name[name]

  def passage(self, name: str) -> Document:
    """The passage describing the named entity."""
    return self._passage_by_title[name]

  def split_questions(self, split: str, kinds: Iterable[str] = KINDS) -> list[Question]:
    kinds = set(kinds)
    return [q for q in self.questions if q.split == split and q.kind in kinds]

  def value(self, lookup: Lookup) -> str:
    """The attribute's value as text ("1931", "172 cm", "Vormsa")."""
    return value_text(lookup.attribute, getattr(self.entity(lookup.entity), lookup.attribute))

  def fact(self, lookup: Lookup) -> str:
    """A short sentence stating the looked-up fact, for the teacher's thoughts."""
    return fact_text(lookup.attribute, lookup.entity, self.value(lookup))

  def sizes(self) -> dict[str, int]:
    """Counts of entities per split and type, passages, and questions per split and kind."""
    out = {"passages": len(self.passages)}
    for e in self.entities:
      key = f"{e.split}_{_PLURALS[type(e)]}"
      out[key] = out.get(key, 0) + 1
    for q in self.questions:
      key = f"{q.split}_{q.kind}"
      out[key] = out.get(key, 0) + 1
    return out


_PLURALS = {Person: "people", Company: "companies", City: "cities"}
# Each thought repeats the passage's word before the value ("born 1931", "born in Vormsa",
# "height 172 cm"), so the value is the token that follows the thought's last word in the
# passage: the simplest thing to copy.
_FACTS = {
    "birth_year": "{e} was born {v}", "birth_city": "{e} was born in {v}",
    "height_cm": "{e} has height {v}", "employer": "{e} works for {v}",
    "founder": "{e} was founded by {v}", "founded": "{e} was founded {v}",
    "headquarters": "{e} is based in {v}", "population_k": "{e} is a city of {v} thousand people",
}


def value_text(attribute: str, value) -> str:
  """An attribute value as facts and answers write it ("172 cm" for heights)."""
  return f"{value} cm" if attribute == "height_cm" else str(value)


def fact_text(attribute: str, entity: str, value: str) -> str:
  """The teacher's sentence for one fact ("A has height 172 cm")."""
  return _FACTS[attribute].format(e=entity, v=value)


NEEDS = {
    "birth_year": "birth year", "birth_city": "birthplace", "height_cm": "height",
    "employer": "employer", "founder": "founder", "founded": "founding year",
    "headquarters": "headquarters", "population_k": "population",
}


def passage_text(e: Entity) -> str:
  """The entity's passage (its title is the name, which the text repeats for retrieval)."""
  if isinstance(e, Person):
    return (f"{e.name}: born {e.birth_year} in {e.birth_city}, height {e.height_cm} cm, "
            f"works for {e.employer}.")
  if isinstance(e, Company):
    return f"{e.name}: a company founded {e.founded} by {e.founder}, based in {e.headquarters}."
  return f"{e.name}: a city of {e.population_k} thousand people."


class _Names:
  """Two-word names drawn from word pools shared by both splits; each full name is unique.

  A test name only combines words that some train name also uses, so every word a test
  question mentions is one the model (and its tokenizer) has seen during training.
  """

  def __init__(self, rng: random.Random, num_entities: int, pools=None,
               taken: Iterable[str] = ()):
    self.rng = rng
    self.used_words: set[str] = set()
    self.taken: set[str] = set(taken)
    self.seen_in_train: set[str] = set()
    self.pools = pools or {
        "person": (self._words(max(8, num_entities // 10)),
                   self._words(max(10, num_entities // 6))),
        "city": (self._words(max(6, num_entities // 20)), _CITY_KINDS),
        "company": (self._words(max(6, num_entities // 12)), _COMPANY_KINDS),
    }

  def _words(self, n: int) -> list[str]:
    out = []
    while len(out) < n:
      parts = [self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(2)]
      w = ("".join(parts) + self.rng.choice(_CODAS)).capitalize()
      if w not in self.used_words:
        self.used_words.add(w)
        out.append(w)
    return out

  def pick(self, kind: str, split: str, like: str | None = None) -> str:
    """A fresh name; test names use train-seen words only; `like` shares a word with it."""
    first, second = self.pools[kind]
    candidates = [f"{a} {b}" for a in first for b in second if f"{a} {b}" not in self.taken]
    if split == "test":
      candidates = [c for c in candidates if set(c.split(" ")) <= self.seen_in_train]
    if like is not None:
      words = set(like.split(" "))
      candidates = [c for c in candidates if words & set(c.split(" "))] or candidates
    if not candidates:
      raise ValueError(f"the synthetic world ran out of {kind} names; lower "
                       "world.entities or the distractor fraction")
    name = self.rng.choice(candidates)
    self.taken.add(name)
    if split == "train":
      self.seen_in_train.update(name.split(" "))
    return name


def _split_sizes(n: int) -> tuple[int, int, int]:
  """(cities, companies, people) for a split of n entities."""
  cities, companies = max(3, round(0.1 * n)), max(2, round(0.2 * n))
  return cities, companies, n - cities - companies


def _make_split(rng: random.Random, names: _Names, split: str, n: int) -> list[Entity]:
  n_cities, n_companies, n_people = _split_sizes(n)
  grid = POPULATIONS_K if n_cities <= len(POPULATIONS_K) else range(20, 1000)
  pops = rng.sample(grid, n_cities)
  cities = [City(names.pick("city", split), split, p) for p in pops]
  people = [Person(names.pick("person", split), split, rng.choice(BIRTH_YEARS),
                   rng.choice(cities).name, rng.choice(HEIGHTS_CM), "")
            for _ in range(n_people)]
  companies = []
  for i in rng.sample(range(n_people), n_companies):
    founder = people[i]
    companies.append(Company(names.pick("company", split),
                             split, founder.birth_year + rng.choice(FOUNDING_DELAYS), founder.name,
                             rng.choice(cities).name))
  employer = {c.founder: c.name for c in companies}
  people = [dataclasses.replace(p, employer=employer.get(p.name) or rng.choice(companies).name)
            for p in people]
  return [*cities, *companies, *people]


def _make_distractors(rng: random.Random, names: _Names, n: int,
                      main: list[Entity]) -> list[Entity]:
  """Entities sharing a name word with a main one (mostly people), never asked about."""
  people = [e for e in main if isinstance(e, Person)]
  cities = [e.name for e in main if isinstance(e, City)]
  companies = [e.name for e in main if isinstance(e, Company)]
  out: list[Entity] = []
  for _ in range(n):
    roll = rng.random()
    if roll < 0.7:
      name = names.pick("person", "distractor", like=rng.choice(people).name)
      out.append(Person(name, "distractor", rng.choice(BIRTH_YEARS), rng.choice(cities),
                        rng.choice(HEIGHTS_CM), rng.choice(companies)))
    elif roll < 0.85:
      founder = rng.choice(people)
      out.append(Company(names.pick("company", "distractor", like=rng.choice(companies)),
                         "distractor", founder.birth_year + rng.choice(FOUNDING_DELAYS),
                         founder.name, rng.choice(cities)))
    else:
      out.append(City(names.pick("city", "distractor", like=rng.choice(cities)), "distractor",
                      rng.choice(POPULATIONS_K)))
  return out


def _distinct_group(rng: random.Random, items: list[Entity], size: int, key: str,
                    tries: int = 50) -> list[Entity] | None:
  """`size` items with pairwise different values of `key`, or None."""
  for _ in range(tries):
    group = rng.sample(items, size)
    if len({getattr(e, key) for e in group}) == size:
      return group
  return None


# The grid each compared attribute's values lie on.
VALUE_GRIDS = {"birth_year": BIRTH_YEARS, "height_cm": HEIGHTS_CM, "population_k": POPULATIONS_K}
COMPARISONS = {  # key -> (entity type, smallest wins?, comparison question, fan-out question)
    "birth_year": (Person, True, "Who was born earlier, {0} or {1}?",
                   "Which of {0}, {1} and {2} was born earliest?"),
    "height_cm": (Person, False, "Who is taller, {0} or {1}?",
                  "Which of {0}, {1} and {2} is the tallest?"),
    "population_k": (City, False, "Which city has more inhabitants, {0} or {1}?",
                     "Which of {0}, {1} and {2} has the most inhabitants?"),
}


def _split_questions(rng: random.Random, split: str, entities: list[Entity]) -> list[Question]:
  people = [e for e in entities if isinstance(e, Person)]
  companies = [e for e in entities if isinstance(e, Company)]
  by_name = {e.name: e for e in entities}
  out: list[tuple[str, str, tuple[str, ...], tuple[tuple[Lookup, ...], ...]]] = []

  def add(kind, text, answers, *rounds):
    out.append((kind, text, tuple(answers), tuple(tuple(r) for r in rounds)))

  for p in people:
    add("single", f"In which city was {p.name} born?", [p.birth_city],
        [Lookup(p.name, "birth_city")])
    add("single", f"In which year was {p.name} born?", [str(p.birth_year)],
        [Lookup(p.name, "birth_year")])
    add("single", f"How tall is {p.name}?", [f"{p.height_cm} cm", str(p.height_cm)],
        [Lookup(p.name, "height_cm")])
    add("single", f"Which company does {p.name} work for?", [p.employer],
        [Lookup(p.name, "employer")])
    c = by_name[p.employer]
    add("bridge", f"In which city is the company that {p.name} works for headquartered?",
        [c.headquarters], [Lookup(p.name, "employer")], [Lookup(c.name, "headquarters")])
    if c.founder != p.name:
      add("bridge", f"Who founded the company that {p.name} works for?", [c.founder],
          [Lookup(p.name, "employer")], [Lookup(c.name, "founder")])
  for c in companies:
    add("single", f"In which city is {c.name} headquartered?", [c.headquarters],
        [Lookup(c.name, "headquarters")])
    add("single", f"Who founded {c.name}?", [c.founder], [Lookup(c.name, "founder")])
    add("bridge", f"In which year was the founder of {c.name} born?",
        [str(by_name[c.founder].birth_year)], [Lookup(c.name, "founder")],
        [Lookup(c.founder, "birth_year")])
    add("bridge", f"In which city was the founder of {c.name} born?",
        [by_name[c.founder].birth_city], [Lookup(c.name, "founder")],
        [Lookup(c.founder, "birth_city")])
  for key, (kind_type, smallest, pair_text, fan_text) in COMPARISONS.items():
    pool = [e for e in entities if isinstance(e, kind_type)]
    count = len(pool)
    for kind, size, text in (("comparison", 2, pair_text), ("fanout", 3, fan_text)):
      for _ in range(count):
        group = _distinct_group(rng, pool, size, key)
        if group is None:
          continue
        best = (min if smallest else max)(group, key=lambda e: getattr(e, key))
        add(kind, text.format(*(e.name for e in group)), [best.name],
            [Lookup(e.name, key) for e in group])
  seen, questions = set(), []
  for kind, text, answers, plan in out:
    if text not in seen:
      seen.add(text)
      questions.append(Question(f"{split}-{len(questions):05d}", text, answers, kind, split, plan))
  return questions


def make_world(seed: int, num_entities: int, *, test_fraction: float = 0.25,
               distractor_fraction: float = 0.5) -> World:
  """A deterministic world of `num_entities` askable entities (train + test) plus distractors.

  `test_fraction` of the entities form the test split; `distractor_fraction * num_entities`
  distractor passages are added. Each split has >= 3 cities, >= 2 companies and >= 3 people.
  """
  n_test = round(num_entities * test_fraction)
  n_train = num_entities - n_test
  if min(n_train, n_test) < 10:
    raise ValueError(f"world.entities={num_entities} with test fraction {test_fraction} "
                     "gives a split under 10 entities; use at least 40 entities")
  rng = random.Random(seed)
  names = _Names(rng, num_entities)
  main: list[Entity] = []
  questions: list[Question] = []
  for split, n in (("train", n_train), ("test", n_test)):
    entities = _make_split(rng, names, split, n)
    main += entities
    questions += _split_questions(rng, split, entities)
  distractors = _make_distractors(rng, names, round(num_entities * distractor_fraction), main)
  entities = main + distractors
  order = list(range(len(entities)))
  rng.shuffle(order)
  passages = tuple(Document(str(i), entities[j].name, passage_text(entities[j]))
                   for i, j in enumerate(order))
  pools = {kind: (tuple(a), tuple(b)) for kind, (a, b) in names.pools.items()}
  return World(seed, tuple(entities), passages, tuple(questions), pools)


def train_draw(world: World, draw: int) -> World:
  """A fresh train split for the same world: new entities, facts and questions.

  Names come from the world's name-word pools (so every word is one its tokenizer knows) but
  never equal a test or distractor name of `world`; a name may reappear with other facts than
  in `world`'s train split. SFT on many draws teaches a small model to copy names and values
  out of the question and the retrieved passage instead of memorising train entities. The
  draw's corpus is its entities' passages only; draw 0 is `world` itself.
  """
  if draw == 0:
    return world
  if not world.name_pools:
    raise ValueError("train_draw needs a world built by make_world (it has no name pools)")
  rng = random.Random(world.seed * 1_000_003 + draw)
  names = _Names(rng, 0, pools=world.name_pools,
                 taken=(e.name for e in world.entities if e.split != "train"))
  n_train = sum(1 for e in world.entities if e.split == "train")
  entities = _make_split(rng, names, "train", n_train)
  questions = _split_questions(rng, "train", entities)
  questions = [dataclasses.replace(q, id=f"draw{draw}-{q.id}") for q in questions]
  passages = tuple(Document(f"draw{draw}-{i}", e.name, passage_text(e))
                   for i, e in enumerate(entities))
  return World(world.seed, tuple(entities), passages, tuple(questions), world.name_pools)


def corpus_rows(world: World) -> list[dict]:
  """Search-R1 corpus rows: id and contents '"Title"\\ntext'."""
  return [{"id": d.id, "contents": d.contents} for d in world.passages]


def write_jsonl(rows: Iterable[dict], path: str) -> str:
  """Writes rows as JSON lines (UTF-8), creating the folder; returns the path."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
  return path


def write_corpus_jsonl(world: World, path: str) -> str:
  return write_jsonl(corpus_rows(world), path)


def write_questions_jsonl(world: World, split: str, path: str) -> str:
  """The split's questions as FlashRAG rows (id, question, golden_answers)."""
  return write_jsonl((q.row() for q in world.split_questions(split)), path)
