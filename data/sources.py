"""Where images come from: recognizing a source from its content, and reading it item by item.

Kinds (all produce the raw tf.Example format of `records.py`):
- `images`:   a folder of image files, recursively; first-level class sub-folders become labels.
- `idx`:      `*-images-idx3-ubyte[.gz]` files (MNIST, Fashion-MNIST, KMNIST) with the matching
              `*-labels-idx1-ubyte[.gz]` when present.
- `npz`:      NumPy archives, loaded without pickle: the keras.datasets layout (`x_train`,
              `y_train`, `x_test`, `y_test`) or a single array of images.
- `tfrecord`: TFRecord files (gzip or plain) of tf.Examples whose image feature holds encoded
              image bytes or raw uint8 pixels of the target shape.
- A dataset name (`mnist`, `fashion_mnist`) is fetched with keras.datasets into Keras' cache
  (~/.keras/datasets) and read from there.

A folder whose children are `span-<N>` folders holds data over time: the latest span is used.
Hidden files and folders (names starting with '.') are not part of a dataset. Every other file is:
one that cannot be read becomes a BadInput with its reason, never silently dropped.
"""
import contextlib
import dataclasses
import gzip
import io
import os
import re
import zipfile
from typing import Iterator, List, Optional, Tuple

import numpy as np

from vae_pipeline.data import fs
from vae_pipeline.data import images

KINDS = ("images", "idx", "npz", "tfrecord")
DATASETS = ("mnist", "fashion_mnist")
SPAN_FOLDER = re.compile(r"span-(\d+)")


class SourceError(ValueError):
  """The source as a whole is unusable (nothing to read, inconsistent files): one clear message."""


@dataclasses.dataclass(frozen=True)
class Source:
  """What ExampleGen reads: `input_base` plus a glob `pattern` (with {SPAN} when spanned)."""
  kind: str
  input_base: str
  pattern: str
  natural_shape: Optional[Tuple[int, int, int]]  # of the first image, when it can be known


@dataclasses.dataclass(frozen=True)
class Unit:
  """One piece of work for a Beam worker: a file, or a slice of an array."""
  kind: str
  path: str
  label: Optional[int] = None  # image files in class folders
  key: Optional[str] = None  # NPZ array name
  labels_key: Optional[str] = None  # NPZ labels array name
  start: int = 0
  stop: Optional[int] = None
  labels_path: Optional[str] = None  # IDX labels file


# ----------------------------------------------------------------------------- recognizing


_GZIP_MAGIC = b"\x1f\x8b"


@contextlib.contextmanager
def _open(path):
  """The file's bytes, gunzipped when it is gzip."""
  with fs.open_binary(path) as raw:
    gzipped = raw.read(2) == _GZIP_MAGIC
    raw.seek(0)
    if not gzipped:
      yield raw
      return
    with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
      yield unzipped


def _is_gzip(path):
  with fs.open_binary(path) as f:
    return f.read(2) == _GZIP_MAGIC


def _head(path, size=16):
  try:
    with _open(path) as f:
      return f.read(size)
  except (OSError, EOFError):
    return b""


def idx_header(head: bytes):
  """(dtype code, dims) if `head` starts an IDX file, else None."""
  if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
    return None
  ndim = head[3]
  if not 1 <= ndim <= 4 or len(head) < 4 + 4 * ndim:
    return None
  dims = tuple(int.from_bytes(head[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  return head[2], dims


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def _is_tfrecord_head(head: bytes) -> bool:
  """A TFRecord starts with a uint64 length and the masked CRC-32C of those 8 bytes."""
  if len(head) < 12:
    return False
  crc = _crc32c(head[:8])
  masked = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
  return int.from_bytes(head[8:12], "little") == masked


# Leading bytes of the image formats Pillow reads most: such files need no further sniffing.
_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


def file_kind(path) -> Optional[str]:
  """`idx`, `npz` or `tfrecord` by content; None for anything else (images, other files)."""
  try:
    with fs.open_binary(path) as f:
      raw = f.read(16)
  except OSError:
    return None  # unreadable files are reported when read
  if raw.startswith(_IMAGE_MAGIC) or (raw[:4] == b"RIFF" and raw[8:12] == b"WEBP"):
    return None
  if raw.startswith(b"PK") and _is_zip(path):
    return "npz"
  head = _head(path) if raw.startswith(_GZIP_MAGIC) else raw
  if idx_header(head):
    return "idx"
  if _is_tfrecord_head(head):
    return "tfrecord"
  return None


def _is_zip(path):
  with fs.open_binary(path) as f:
    return zipfile.is_zipfile(f)


def _load_npz(path):
  """np.load without pickle; a URI's bytes are read first (a member is decompressed whole anyway)."""
  if not fs.is_uri(path):
    return np.load(path, allow_pickle=False)
  with fs.open_binary(path) as f:
    return np.load(io.BytesIO(f.read()), allow_pickle=False)


def list_files(root) -> List[str]:
  """Every non-hidden file below `root` (or `root` itself), sorted."""
  if fs.isfile(root):
    return [root]
  found = []
  for folder, subfolders, files in fs.walk(root):
    subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
    found += [os.path.join(folder, f) for f in sorted(files) if not f.startswith(".")]
  return found


def latest_span(folder) -> Optional[str]:
  spans = [(int(m.group(1)), name) for name in fs.listdir(folder)
           if (m := SPAN_FOLDER.fullmatch(name)) and fs.isdir(os.path.join(folder, name))]
  return max(spans)[1] if spans else None


def keras_cache_dir():
  """Where keras.datasets keeps its downloads (tf_keras uses ~/.keras)."""
  return os.path.join(os.path.expanduser("~"), ".keras", "datasets")


def fetch_dataset(name) -> str:
  """The cached files of a keras.datasets dataset; downloads them with Keras when missing."""
  if name == "mnist":
    path = os.path.join(keras_cache_dir(), "mnist.npz")
    if not os.path.exists(path):
      import tf_keras
      tf_keras.datasets.mnist.load_data()
    return path
  if name == "fashion_mnist":
    folder = os.path.join(keras_cache_dir(), "fashion-mnist")
    if not (os.path.isdir(folder) and len(list_files(folder)) >= 4):
      import tf_keras
      tf_keras.datasets.fashion_mnist.load_data()
    return folder
  raise SourceError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")


def resolve(data: str) -> Source:
  """Recognizes the kind of `data` (a path or a dataset name) from its content."""
  if data in DATASETS:
    data = fetch_dataset(data)
  if not fs.exists(data):
    raise SourceError(f"{data}: no such file or folder (nor a dataset name: "
                      f"{', '.join(DATASETS)})")
  data = fs.abspath(data)
  if fs.isfile(data):
    input_base, pattern, root = os.path.dirname(data), os.path.basename(data), data
  else:
    input_base, pattern, root = data, "", data
    span = latest_span(data)
    if span:
      pattern, root = "span-{SPAN}/", os.path.join(data, span)
  files = list_files(root)
  if not files:
    raise SourceError(f"{root}: no files to read (empty folder)")
  kind, _ = source_kind(root, files)
  if fs.isdir(root):
    # Deep enough for ExampleGen's fingerprint to see every file (caching), e.g. class/file.png.
    depth = max(fs.relative(f, root).count("/") for f in files) + 1
    pattern += "/".join(["*"] * depth)
  return Source(kind, input_base, pattern, natural_shape=natural_shape(root))


# ----------------------------------------------------------------------------- planning


def pattern_root(input_base, pattern):
  """The folder a (span-resolved) pattern reads: its path before the first wildcard."""
  parts = pattern.split("/")
  fixed = []
  for part in parts:
    if any(c in part for c in "*?["):
      break
    fixed.append(part)
  return os.path.join(input_base, *fixed) if fixed else input_base


def class_names(root, files) -> Optional[List[str]]:
  """Sorted first-level folder names when every file is inside one, else None (no labels)."""
  if fs.isfile(root):
    return None
  first = {fs.relative(f, root).split("/")[0] for f in files}
  if any("/" not in fs.relative(f, root) for f in files):
    return None
  return sorted(first)


def plan(input_base, pattern) -> Tuple[str, List[Unit], Optional[List[str]]]:
  """(kind, units of work, class names) for a span-resolved pattern."""
  return plan_root(pattern_root(input_base, pattern))


def source_kind(root, files) -> Tuple[str, dict]:
  """(the source's kind, each file's kind); `images` unless some files are IDX, NPZ or TFRecord."""
  kinds = {f: file_kind(f) for f in files}
  found = {k for k in kinds.values() if k}
  if len(found) > 1:
    raise SourceError(f"{root} mixes {' and '.join(sorted(found))} files; give one kind per source")
  return (found.pop() if found else "images"), kinds


def plan_root(root) -> Tuple[str, List[Unit], Optional[List[str]]]:
  """(kind, units of work, class names) for a file or a folder."""
  files = list_files(root)
  if not files:
    raise SourceError(f"{root}: no files to read (empty folder)")
  kind, kinds = source_kind(root, files)
  if kind == "images":
    names = class_names(root, files)
    label_of = {name: i for i, name in enumerate(names or [])}
    return kind, [Unit("images", f, label=label_of.get(fs.relative(f, root).split("/")[0])
                       if names else None) for f in files], names
  if kind == "idx":
    return kind, _plan_idx(files), None
  others = [f for f in files if kinds[f] != kind]
  if others:
    raise SourceError(f"{root}: these files are not {kind} files: {', '.join(others)}")
  if kind == "npz":
    return kind, [u for f in files for u in _plan_npz(f)], None
  return kind, [Unit("tfrecord", f) for f in files], None


def _idx_count(path):
  """Validates an IDX file's size against its header; returns (dims, dtype)."""
  head = _head(path, 4 + 4 * 4)
  header = idx_header(head)
  code, dims = header
  dtype = np.dtype(_IDX_DTYPES[code])
  offset = 4 + 4 * len(dims)
  with _open(path) as f:
    size = 0
    while chunk := f.read(1 << 22):
      size += len(chunk)
  expected = offset + int(np.prod(dims)) * dtype.itemsize
  if size != expected:
    raise SourceError(f"{path}: IDX header says {' x '.join(map(str, dims))} "
                      f"({expected:,} bytes with the header) but the file has {size:,} bytes")
  return dims, dtype


def _plan_idx(files):
  headers = {f: idx_header(_head(f)) for f in files}
  images_files = [f for f, h in headers.items() if h and len(h[1]) >= 3]
  label_files = {f for f, h in headers.items() if h and len(h[1]) == 1}
  if not images_files:
    raise SourceError(f"no IDX images file (idx3) among {', '.join(files)}")
  units = []
  for path in images_files:
    dims, _ = _idx_count(path)
    labels = path.replace("images-idx3", "labels-idx1")
    labels_path = labels if labels in label_files else None
    if labels_path:
      label_dims, _ = _idx_count(labels_path)
      if label_dims[0] != dims[0]:
        raise SourceError(f"{path} has {dims[0]:,} images but {labels_path} has "
                          f"{label_dims[0]:,} labels")
    units.append(Unit("idx", path, labels_path=labels_path, start=0, stop=dims[0]))
  stray = set(files) - set(images_files) - {u.labels_path for u in units}
  if stray:
    raise SourceError(f"files that are not part of an IDX images/labels pair: {', '.join(sorted(stray))}")
  return units


def _npz_arrays(path):
  """(images key, labels key or None) pairs of a keras.datasets-style or single-array NPZ."""
  with _load_npz(path) as archive:
    keys = list(archive.keys())
  pairs = [(x, "y" + x[1:] if "y" + x[1:] in keys else None)
           for x in keys if x.startswith("x_")]
  if pairs:
    return pairs
  if len(keys) == 1:
    return [(keys[0], None)]
  raise SourceError(f"{path}: expected arrays x_train/y_train/x_test/y_test or a single array "
                    f"of images, found {', '.join(keys)}")


def _plan_npz(path):
  try:
    pairs = _npz_arrays(path)
    with _load_npz(path) as archive:
      counts = {key: archive[key].shape[0] for pair in pairs for key in pair if key}
  except SourceError:
    raise
  except ValueError as error:  # object arrays would need pickle, which can run code
    raise SourceError(f"{path}: cannot be read without pickle: {error}") from None
  units = []
  for key, labels_key in pairs:
    if labels_key and counts[labels_key] != counts[key]:
      raise SourceError(f"{path}: {key} has {counts[key]:,} images but {labels_key} has "
                        f"{counts[labels_key]:,} labels")
    # One unit per array: an NPZ member can only be decompressed whole.
    units.append(Unit("npz", path, key=key, labels_key=labels_key, start=0, stop=counts[key]))
  return units


# ----------------------------------------------------------------------------- reading


def read(unit: Unit, image_feature: str = "image") -> Iterator[Tuple[str, object, Optional[int]]]:
  """(item id, payload, label) for every item of a unit; a payload is image bytes, a uint8
  array, or a BadInput (the item could not be read)."""
  if unit.kind == "images":
    try:
      with fs.open_binary(unit.path) as f:
        payload = f.read()
    except OSError as error:
      payload = images.BadInput(f"cannot read: {error.strerror or error}")
    yield unit.path, payload, unit.label
  elif unit.kind == "idx":
    yield from _read_idx(unit)
  elif unit.kind == "npz":
    yield from _read_npz(unit)
  elif unit.kind == "tfrecord":
    yield from _read_tfrecord(unit, image_feature)
  else:
    raise ValueError(f"unknown unit kind {unit.kind!r}")


def _read_idx(unit):
  code, dims = idx_header(_head(unit.path, 32))
  dtype = np.dtype(_IDX_DTYPES[code])
  per_image = int(np.prod(dims[1:])) * dtype.itemsize
  labels = None
  if unit.labels_path:
    with _open(unit.labels_path) as f:
      labels = np.frombuffer(f.read()[8:], np.uint8)
  with _open(unit.path) as f:
    f.read(4 + 4 * len(dims))
    for index in range(unit.start, unit.stop):
      pixels = np.frombuffer(f.read(per_image), dtype).reshape(dims[1:])
      yield (f"{unit.path}[{index}]", pixels,
             int(labels[index]) if labels is not None else None)


def _read_npz(unit):
  with _load_npz(unit.path) as archive:
    array = archive[unit.key]
    labels = archive[unit.labels_key] if unit.labels_key else None
  scale = 1.0
  if np.issubdtype(array.dtype, np.floating):
    finite = array[np.isfinite(array)]
    # A float array whose values all lie in [0, 1] is taken as already scaled (documented).
    if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
      scale = 255.0
  for index in range(unit.start, unit.stop):
    label = labels[index] if labels is not None else None
    yield (f"{unit.path}:{unit.key}[{index}]", array[index] * scale,
           int(np.asarray(label).reshape(-1)[0]) if label is not None else None)


def _read_tfrecord(unit, image_feature):
  import tensorflow as tf
  compression = "GZIP" if _is_gzip(unit.path) else ""
  for index, record in enumerate(tf.data.TFRecordDataset(unit.path, compression_type=compression)):
    item = f"{unit.path}#{index}"
    try:
      example = tf.train.Example.FromString(record.numpy())
    except Exception:  # pylint: disable=broad-except
      yield item, images.BadInput("record is not a tf.Example"), None
      continue
    feature = example.features.feature
    values = feature[image_feature].bytes_list.value if image_feature in feature else []
    if len(values) != 1:
      yield item, images.BadInput(f"expected one bytes value in feature {image_feature!r}, "
                                  f"found {len(values)}"), None
      continue
    label = feature["label"].int64_list.value if "label" in feature else []
    yield item, values[0], int(label[0]) if len(label) == 1 else None


def natural_shape(root) -> Optional[Tuple[int, int, int]]:
  """The shape of the first image of a source, for a default --image-shape; None if unknown."""
  try:
    _, units, _ = plan_root(root)
    for _, payload, _ in read(units[0]):
      image = (images.open_image(payload) if isinstance(payload, bytes)
               else images.array_to_image(payload))
      channels = 1 if image.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F") else 3
      return image.height, image.width, channels
  except (images.BadInput, SourceError, OSError, ValueError, TypeError):
    return None
  return None
