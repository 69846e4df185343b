"""tensorflow-datasets builders for QA data (benchmarks, RL questions) and the SFT data.

Written as array_record and read back with `builder.as_data_source(split)`: random access and
no tensorflow. Nothing downloads: the builders read local files. A QA dataset is named by a
spec (`resolve_spec`): a name, read in the FlashRAG layout `<data_dir>/<name>/{train,dev,test}`
with extension .jsonl, .json or .parquet (source_files.py reads each); a directory path, read
the same way (Search-R1's `data/nq_search/{train,test}.parquet`); or one file, which serves
every split asked of it. SFT files are `.json` or `.jsonl` under `<data_dir>/sft/` or the files
named in the config. Prepared data goes under `tfds_dir` (default: tfds's own, ~/tensorflow_datasets
or $TFDS_DATA_DIR). The config name carries a hash of the source files, so an edited file is
prepared afresh instead of read stale. Callers use `load_split`; the classes serve `tfds build`
(`--manual_dir=<data_dir>`, config = dataset name) too.
"""

import collections.abc
import dataclasses
import hashlib
import os
import re
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import tensorflow_datasets as tfds

from rag_r1_jax.data import source_files

# FlashRAG's benchmark names; any other name works the same way.
BENCHMARKS = ("nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle")
RL_DATA = "rl"  # RAG-R1's RL questions: the same row format as the benchmarks.
SFT_DATA = "sft"
QA_DATASETS = BENCHMARKS + (RL_DATA,)
DATASETS = QA_DATASETS + (SFT_DATA,)
SPLITS = ("train", "dev", "test")
_MANUAL = ("Put FlashRAG-layout files at <manual_dir>/<dataset>/{train,dev,test}.jsonl "
           "(or .json / Search-R1 .parquet; sft: .json or .jsonl alpaca rows).")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


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
  """QA rows {id, question, golden_answers, data_source, extra_info} of one dataset.

  data_source: the row's own (Search-R1 mixes several in one file), else the dataset's name.
  extra_info: the row's `extra_info` as JSON text, '' when it has none.
  """
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.1.0": "data_source and extra_info; .json and .parquet sources."}
  BUILDER_CONFIGS = [SourceConfig(name=n, dataset=n) for n in QA_DATASETS]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, disable_shuffling=True,
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            "question": tfds.features.Text(),
            "golden_answers": tfds.features.Sequence(tfds.features.Text()),
            "data_source": tfds.features.Text(),
            "extra_info": tfds.features.Text(),
        }))

  def _generate_examples(self, path: str, split: str):
    source = self.builder_config.dataset or self.builder_config.name
    for i, row in enumerate(source_files.read_qa_rows(path, split, source)):
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


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Where one configured QA dataset's files are.

  name: the dataset's name (the default data_source of its rows).
  files: {split: path}; with `single_file`, the one file serves every split.
  """
  name: str
  files: dict
  single_file: bool = False

  def split_path(self, split: str) -> Optional[str]:
    """The file of `split`, or None if the dataset has none."""
    if self.single_file:
      return next(iter(self.files.values()))
    return self.files.get(split)


def is_path_spec(spec: str) -> bool:
  """Whether a dataset entry names a file or directory (else it is a name under data.dir)."""
  return "/" in spec or os.sep in spec or spec.endswith(source_files.QA_EXTENSIONS)


def resolve_spec(spec: str, data_dir: str) -> DatasetSpec:
  """The files of a dataset spec: a name under data_dir, a directory, or one file.

  A file named after a split (Search-R1's train.parquet) takes its directory's name.
  """
  spec = os.path.expanduser(spec.strip())
  if not spec:
    raise ValueError("empty dataset name")
  if not is_path_spec(spec):
    return DatasetSpec(spec, find_source_files(spec, data_dir))
  if os.path.isdir(spec):
    name = os.path.basename(os.path.normpath(spec))
    return DatasetSpec(name, _files_in(spec, name, _extensions(name), f"the directory {spec}"))
  if not os.path.isfile(spec):
    raise FileNotFoundError(f"dataset file {spec} does not exist")
  if not spec.endswith(source_files.QA_EXTENSIONS):
    raise ValueError(f"dataset file {spec}: expected one of {source_files.QA_EXTENSIONS}")
  stem = os.path.splitext(os.path.basename(spec))[0]
  name = os.path.basename(os.path.dirname(os.path.abspath(spec))) if stem in SPLITS else stem
  return DatasetSpec(name, {stem if stem in SPLITS else "train": spec}, single_file=True)


def _extensions(name: str) -> tuple[str, ...]:
  return (".json", ".jsonl") if name == SFT_DATA else source_files.QA_EXTENSIONS


def _files_in(directory: str, name: str, extensions: tuple[str, ...], where: str
              ) -> dict[str, str]:
  found = {}
  for split in SPLITS:
    present = [split + ext for ext in extensions
               if os.path.isfile(os.path.join(directory, split + ext))]
    if len(present) > 1:
      raise ValueError(f"{name}: both {' and '.join(present)} under {directory}; keep one")
    if present:
      found[split] = os.path.join(directory, present[0])
  if not found:
    raise FileNotFoundError(
        f"no {name} files under {directory}: expected "
        f"{{{','.join(SPLITS)}}}{{{','.join(extensions)}}} ({where})")
  return found


def find_source_files(name: str, data_dir: str) -> dict[str, str]:
  """{split: path} of the files present for dataset `name` under `data_dir` (FlashRAG layout)."""
  return _files_in(os.path.join(data_dir, name), name, _extensions(name),
                   f"config data.dir={data_dir!r}")


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
  The name `sft` prepares alpaca SFT rows; any other name, QA rows.
  """
  if files is None:
    files = find_source_files(name, data_dir)
  for split, path in files.items():
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{name} {split} file not found: {path}")
  files = {split: os.path.abspath(path) for split, path in files.items()}
  safe_name = _UNSAFE_NAME.sub("_", name)
  config = SourceConfig(name=f"{safe_name}-{_fingerprint(files)}", dataset=name,
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
