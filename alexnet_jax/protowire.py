"""A minimal protobuf wire-format reader: enough to read .caffemodel and .onnx files.

No generated code, no protoc, no size limit: the file is memory-mapped and large packed arrays
(a layer's weights) become numpy views of the mapping, never Python lists. A message is read
into ``{field_number: [value, ...]}`` where a varint is an ``int``, a fixed32/fixed64 is its raw
bytes, and a length-delimited field is a :class:`Span` (bytes, string, sub-message or packed
array: the schema decides, so the caller does).

Wire format (developers.google.com/protocol-buffers/docs/encoding): each field is a varint key
``field_number << 3 | wire_type`` followed by a varint (type 0), 8 bytes (1), a varint length
and that many bytes (2) or 4 bytes (5).
"""

from __future__ import annotations

import dataclasses
import mmap
import struct

import numpy as np


class WireError(ValueError):
  """The bytes are not a well-formed protobuf message (truncated or not protobuf at all)."""


@dataclasses.dataclass(frozen=True)
class Span:
  """A length-delimited field: ``data[start:end]`` of the buffer it was read from."""
  data: memoryview
  start: int
  end: int
  cut: bool = False  # the file ends inside this field (only from a ``partial`` read)

  def bytes(self) -> bytes:
    return bytes(self.data[self.start:self.end])

  def text(self) -> str:
    return self.bytes().decode('utf-8', errors='replace')

  def message(self, partial: bool = False) -> dict[int, list]:
    return read_message(self.data, self.start, self.end, partial)

  def floats(self, dtype='<f4') -> np.ndarray:
    """A packed float (or double) array as a read-only numpy view (no copy)."""
    itemsize = np.dtype(dtype).itemsize
    if (self.end - self.start) % itemsize:
      raise WireError('a packed float array is cut off')
    return np.frombuffer(self.data, dtype=dtype, count=(self.end - self.start) // itemsize,
                         offset=self.start)

  def varints(self) -> list[int]:
    """A packed varint array (e.g. ``repeated int64 dim [packed = true]``)."""
    values, pos = [], self.start
    while pos < self.end:
      value, pos = _varint(self.data, pos, self.end)
      values.append(value)
    return values


def _varint(data: memoryview, pos: int, end: int) -> tuple[int, int]:
  value = shift = 0
  while True:
    if pos >= end:
      raise WireError('a varint runs past the end of its message')
    byte = data[pos]
    pos += 1
    value |= (byte & 0x7F) << shift
    if not byte & 0x80:
      return value, pos
    shift += 7
    if shift > 63:
      raise WireError('a varint is longer than 10 bytes')


def read_message(data: memoryview, start: int = 0, end: int | None = None,
                 partial: bool = False) -> dict[int, list]:
  """``{field_number: [values in file order]}`` of the message in ``data[start:end]``.

  With ``partial`` a broken field ends the reading instead of raising: the fields before it are
  returned, and the error under the key 0 (no real field has number 0); a length-delimited
  field that the data ends inside is kept as a ``cut`` Span of what there is (its name, which
  comes first in the messages we read, tells a truncated file's reader where it broke off).
  """
  end = len(data) if end is None else end
  fields: dict[int, list] = {}
  try:
    _read_fields(data, start, end, fields, partial)
  except WireError as e:
    if not partial:
      raise
    fields[0] = [e]
  return fields


def _read_fields(data: memoryview, pos: int, end: int, fields: dict[int, list],
                 partial: bool) -> None:
  while pos < end:
    key, pos = _varint(data, pos, end)
    number, wire_type = key >> 3, key & 7
    if number == 0:
      raise WireError('field number 0 (not a protobuf message)')
    if wire_type == 0:
      value, pos = _varint(data, pos, end)
    elif wire_type in (1, 5):
      size = 8 if wire_type == 1 else 4
      if pos + size > end:
        raise WireError('a fixed-size field runs past the end of its message')
      value, pos = bytes(data[pos:pos + size]), pos + size
    elif wire_type == 2:
      length, pos = _varint(data, pos, end)
      if pos + length > end:
        if partial:
          fields.setdefault(number, []).append(Span(data, pos, end, cut=True))
        raise WireError('a length-delimited field runs past the end of its message')
      value, pos = Span(data, pos, pos + length), pos + length
    else:  # 3, 4 (groups, unused since proto2's early days), 6, 7: not protobuf we can read.
      raise WireError(f'unsupported wire type {wire_type}')
    fields.setdefault(number, []).append(value)


def map_file(path: str) -> memoryview:
  """The file's bytes, memory-mapped read-only (an empty file gives an empty view)."""
  with open(path, 'rb') as f:
    if not f.seek(0, 2):
      return memoryview(b'')
    return memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))


# Typed accessors: a proto field's value given the schema's type.
def first(fields: dict[int, list], number: int, default=None):
  values = fields.get(number)
  return values[-1] if values else default  # protobuf: the last value of a scalar wins


def text(fields: dict[int, list], number: int, default: str = '') -> str:
  value = first(fields, number)
  return value.text() if isinstance(value, Span) else default


def float32(fields: dict[int, list], number: int, default: float) -> float:
  value = first(fields, number)
  return struct.unpack('<f', value)[0] if isinstance(value, bytes) else default


def repeated_ints(fields: dict[int, list], number: int) -> list[int]:
  """A repeated integer field, packed or not (readers must accept both)."""
  values: list[int] = []
  for value in fields.get(number, []):
    values.extend(value.varints() if isinstance(value, Span) else [value])
  return values


def repeated_floats(fields: dict[int, list], number: int, dtype='<f4') -> np.ndarray:
  """A repeated float field, packed (one view, no copy) or not (one 4-byte value per entry)."""
  values = fields.get(number, [])
  if len(values) == 1 and isinstance(values[0], Span):
    return values[0].floats(dtype)
  parts = [v.floats(dtype) if isinstance(v, Span) else np.frombuffer(v, dtype=dtype)
           for v in values]
  return np.concatenate(parts) if parts else np.zeros((0,), dtype)


def signed(value: int) -> int:
  """A varint read as a two's-complement int64 (negative int32/int64 fields)."""
  return value - (1 << 64) if value >= 1 << 63 else value


def cut_name(fields: dict[int, list], path: tuple[tuple[int, int], ...]) -> str | None:
  """The name of the innermost message along ``path`` (``((field, name_field), ...)``, outer
  message first) when the data ends inside each of them; else None."""
  name = None
  for number, name_field in path:
    values = fields.get(number) or [None]
    if not (isinstance(values[-1], Span) and values[-1].cut):
      return None
    fields = values[-1].message(partial=True)
    name = text(fields, name_field)
  return name or None
