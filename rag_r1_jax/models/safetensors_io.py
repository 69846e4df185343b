"""Memory-mapped safetensors reading and writing, including bfloat16 (via ml_dtypes).

Reading maps the file and slices tensors lazily, so a device shard reads only its bytes.
"""

import json
import os
import struct
from typing import Mapping

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


class SafetensorsFile:
  """Lazy access to the tensors of one .safetensors file."""

  def __init__(self, path: str):
    self.path = path
    with open(path, "rb") as f:
      head = f.read(8)
      if len(head) != 8:
        raise ValueError(f"{path}: not a safetensors file (too short)")
      (header_len,) = struct.unpack("<Q", head)
      if header_len > os.path.getsize(path) - 8:
        raise ValueError(f"{path}: not a safetensors file (header length {header_len})")
      try:
        header = json.loads(f.read(header_len))
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a safetensors file (bad header: {e})") from e
    self.metadata = header.pop("__metadata__", {}) or {}
    self._entries = header
    self._offset = 8 + header_len
    try:
      need = self._offset + max((e["data_offsets"][1] for e in header.values()), default=0)
    except (TypeError, KeyError, IndexError) as e:
      raise ValueError(f"{path}: not a safetensors file (bad header entry: {e!r})") from None
    size = os.path.getsize(path)
    if size < need:
      raise ValueError(f"{path}: truncated safetensors file ({size} of {need} bytes; was its "
                       "write or copy interrupted?)")
    self._mmap = np.memmap(path, dtype=np.uint8, mode="r")

  def keys(self) -> list[str]:
    return list(self._entries)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._entries[name]["shape"])

  def get(self, name: str) -> np.ndarray:
    """The tensor as a read-only memory-mapped numpy array (no copy until sliced)."""
    entry = self._entries[name]
    if entry["dtype"] not in _DTYPES:
      raise ValueError(f"{self.path}: tensor {name} has unsupported dtype {entry['dtype']}")
    begin, end = entry["data_offsets"]
    raw = self._mmap[self._offset + begin:self._offset + end]
    return raw.view(_DTYPES[entry["dtype"]]).reshape(entry["shape"])


def save_file(tensors: Mapping[str, np.ndarray], path: str,
              metadata: Mapping[str, str] | None = None) -> None:
  """Writes `tensors` to `path` atomically (a temporary file, then a rename)."""
  header, offset, arrays = {}, 0, []
  for name in sorted(tensors):
    array = np.ascontiguousarray(tensors[name])
    if array.dtype not in _NAMES:
      raise ValueError(f"cannot save tensor {name} of dtype {array.dtype}")
    header[name] = {"dtype": _NAMES[array.dtype], "shape": list(array.shape),
                    "data_offsets": [offset, offset + array.nbytes]}
    offset += array.nbytes
    arrays.append(array)
  if metadata:
    header["__metadata__"] = dict(metadata)
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for array in arrays:
      f.write(array.tobytes())
  os.replace(tmp, path)
