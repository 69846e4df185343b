"""tensorflow-datasets builders for the QA benchmarks, the RL questions and the SFT data.

Written as array_record and read back with `builder.as_data_source(split)`: random access and
no tensorflow. Nothing downloads: the builders read local files, in the FlashRAG layout
`<data_dir>/<name>/{train,dev,test}.jsonl` (SFT: `.json` or `.jsonl`), or the files named in
the config. Prepared data goes under `tfds_dir` (default: tfds's own, ~/tensorflow_datasets
or $TFDS_DATA_DIR). The config name carries a hash of the source files, so an edited file is
prepared afresh instead of read stale. Callers use `load_split`; the classes serve `tfds build`
(`--manual_dir=<data_dir>`, config = dataset name) too.
"""

import collections.abc
import dataclasses
import hashlib
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import tensorflow_datasets as tfds

from rag_r1_jax.data import source_files

BENCHMARKS = ("nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle")
RL_DATA = "rl"  # RAG-R1's RL questions: the same row format as the benchmarks.
SFT_DATA = "sft"
QA_DATASETS = BENCHMARKS + (RL_DATA,)
DATASETS = QA_DATASETS + (SFT_DATA,)
SPLITS = ("train", "dev", "test")
_MANUAL = ("Put FlashRAG-layout files at <manual_dir>/<dataset>/{train,dev,test}.jsonl "
           "(sft: .json or .jsonl alpaca rows).")


@dataclasses.dataclass
class SourceConfig(tfds.core.BuilderConfig):
  """A dataset name and its source files; empty files: look under the manual dir."""
  dataset: str = ""
  files: tuple[tuple[str, str], ...] = ()  # (split, path)


def _split_files(config: SourceConfig, manual_dir: Optional[str]) -> dict[str, str]:
  """The config's files, or those found under the manual dir."""
  if config.files:
    return dict(config.files)
  return find_source_files(config.dataset or config.name, str(manual_dir))


class _LocalFilesBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared split discovery; examples keep file order (no tfds shuffling)."""
  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL
  # Local files only: no checksums file to find next to the code (tfds's lookup of it also
  # imports importlib_resources, which tfds does not declare).
  code_path = None

  def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
    manual_dir = None if self.builder_config.files else dl_manager.manual_dir
    return {split: self._generate_examples(path, split)
            for split, path in _split_files(self.builder_config, manual_dir).items()}


class RagR1Qa(_LocalFilesBuilder):
  """QA rows {id, question, golden_answers} of one benchmark or the RL question set."""
  BUILDER_CONFIGS = [SourceConfig(name=n, dataset=n) for n in QA_DATASETS]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, disable_shuffling=True,
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            "question": tfds.features.Text(),
            "golden_answers": tfds.features.Sequence(tfds.features.Text()),
        }))

  def _generate_examples(self, path: str, split: str):
    for i, row in enumerate(source_files.read_qa_jsonl(path, split)):
      yield i, row


class RagR1Sft(_LocalFilesBuilder):
  """SFT rows {instruction, input, output, system} in alpaca / LLaMA-Factory form."""
  BUILDER_CONFIGS = [SourceConfig(name=SFT_DATA, dataset=SFT_DATA)]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, disable_shuffling=True,
        features=tfds.features.FeaturesDict(
            {k: tfds.features.Text() for k in ("instruction", "input", "output", "system")}))

  def _generate_examples(self, path: str, split: str):
    del split
    for i, row in enumerate(source_files.read_sft_rows(path)):
      yield i, row


def find_source_files(name: str, data_dir: str) -> dict[str, str]:
  """{split: path} of the files present for dataset `name` under `data_dir` (FlashRAG layout)."""
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; valid: {list(DATASETS)}")
  extensions = (".json", ".jsonl") if name == SFT_DATA else (".jsonl",)
  found = {}
  for split in SPLITS:
    for ext in extensions:
      path = os.path.join(data_dir, name, split + ext)
      if os.path.isfile(path):
        found[split] = path
        break
  if not found:
    raise FileNotFoundError(
        f"no {name} files under {os.path.join(data_dir, name)}: expected "
        f"{{{','.join(SPLITS)}}}{'|'.join(extensions)} (config data.dir={data_dir!r})")
  return found


def _fingerprint(files: Mapping[str, str]) -> str:
  """A short hash of the split names and the files' bytes."""
  digest = hashlib.sha256()
  for split in sorted(files):
    digest.update(split.encode() + b"\0")
    with open(files[split], "rb") as f:
      for chunk in iter(lambda: f.read(1 << 20), b""):
        digest.update(chunk)
    digest.update(b"\0")
  return digest.hexdigest()[:16]


def prepare(name: str, data_dir: str = "", tfds_dir: Optional[str] = None,
            files: Optional[Mapping[str, str]] = None) -> tfds.core.DatasetBuilder:
  """The prepared builder of dataset `name` (built on first use, reused while files are unchanged).

  files: {split: path} overriding the FlashRAG layout under data_dir (e.g. config sft.data_path).
  """
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; valid: {list(DATASETS)}")
  if files is None:
    files = find_source_files(name, data_dir)
  for split, path in files.items():
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{name} {split} file not found: {path}")
  files = {split: os.path.abspath(path) for split, path in files.items()}
  config = SourceConfig(name=f"{name}-{_fingerprint(files)}", dataset=name,
                        files=tuple(sorted(files.items())))
  builder_cls = RagR1Sft if name == SFT_DATA else RagR1Qa
  builder = builder_cls(config=config, data_dir=tfds_dir, file_format="array_record")
  builder.download_and_prepare()
  return builder


def _decode(value: Any) -> Any:
  """bytes -> str, sequences of bytes -> list[str]; other values unchanged."""
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, (list, tuple, np.ndarray)):
    return [_decode(v) for v in value]
  return value


class DecodedSource(collections.abc.Sequence):
  """A random-access view of a tfds data source whose records are dicts of str / list[str]."""

  def __init__(self, source: Any):
    self._source = source

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int | slice) -> dict | list[dict]:
    if isinstance(index, slice):
      return self.__getitems__(range(len(self))[index])
    if not isinstance(index, (int, np.integer)):
      raise TypeError(f"index must be an integer, got {type(index).__name__}")
    if index < 0:
      index += len(self)
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for {len(self)} records")
    return {k: _decode(v) for k, v in self._source[int(index)].items()}

  def __getitems__(self, indices: Sequence[int]) -> list[dict]:
    if not indices:
      return []
    records = self._source.__getitems__([int(i) for i in indices])
    return [{k: _decode(v) for k, v in r.items()} for r in records]


def load_split(name: str, split: str, data_dir: str = "", tfds_dir: Optional[str] = None,
               files: Optional[Mapping[str, str]] = None) -> DecodedSource:
  """Records of `split` of dataset `name`: a sequence of dicts, preparing it first if needed."""
  builder = prepare(name, data_dir, tfds_dir, files)
  if split not in builder.info.splits:
    raise ValueError(f"{name} has no split {split!r}; available: {sorted(builder.info.splits)}")
  return DecodedSource(builder.as_data_source(split))
