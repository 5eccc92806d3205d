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
Hidden files and folders (names starting with '.') are not part of a dataset. Every other entry
is: symbolic links are followed (files and folders), and an entry that cannot be read (an
unreadable folder, a dangling link, a link loop, a file name that is not UTF-8, a FIFO) becomes a
BadInput with its reason, never silently dropped. The listing is this module's, not TFX's: TFX's
file listing and fingerprinting fail on such entries (see components/image_example_gen/driver.py).
"""
import contextlib
import dataclasses
import errno
import gzip
import io
import os
import re
import stat
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
  natural_shape: Optional[Tuple[int, int, int]]  # of the first readable image, when known
  shape_from: Optional[str] = None  # the item natural_shape comes from


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
  reason: Optional[str] = None  # kind "bad": an entry that cannot be read, and why


@dataclasses.dataclass(frozen=True)
class Listing:
  """What a folder holds: the files to read, and the entries that cannot be read."""
  files: List[str]
  bad: List[Tuple[str, str]]  # (the entry, why it cannot be read); `printable` shows a path


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


def printable(path) -> str:
  """A path as text: bytes that are not UTF-8 (kept by Python as surrogates) as \\xNN."""
  return os.fsencode(path).decode("utf-8", "backslashreplace") if not fs.is_uri(path) else path


def _is_utf8(path) -> bool:
  try:
    path.encode("utf-8")
    return True
  except UnicodeEncodeError:
    return False


def scan(root) -> Listing:
  """Every non-hidden entry below `root` (or `root` itself): readable files in order (each
  folder's files, sorted, then its sub-folders, sorted), and what cannot be read, with why."""
  if fs.is_uri(root):
    if fs.isfile(root):
      return Listing([root], [])
    found = []
    for folder, subfolders, files in fs.walk(root):
      subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
      found += [os.path.join(folder, f) for f in sorted(files) if not f.startswith(".")]
    return Listing(found, [])
  files, bad = [], []
  if os.path.isdir(root):
    info = os.stat(root)
    _scan_folder(root, {(info.st_dev, info.st_ino): root}, {}, files, bad)
  else:
    _scan_entry(root, None, {}, files, bad)
  return Listing(files, bad)


def _scan_folder(folder, ancestors, seen, files, bad):
  try:
    names = sorted(name for name in os.listdir(folder) if not name.startswith("."))
  except OSError as error:
    bad.append((folder, f"cannot read folder: {error.strerror or error}"))
    return
  folders = []
  for name in names:
    folders += _scan_entry(os.path.join(folder, name), ancestors, seen, files, bad)
  for path, key in folders:
    seen[key] = path
    _scan_folder(path, {**ancestors, key: path}, seen, files, bad)


def _scan_entry(path, ancestors, seen, files, bad):
  """Files a readable file, records a bad entry; returns [(path, (dev, inode))] for a folder."""
  if not _is_utf8(path):
    bad.append((path, "its name is not valid UTF-8 (rename it)"))
    return []
  try:
    info = os.stat(path)  # follows symbolic links
  except OSError as error:
    if error.errno == errno.ELOOP:
      reason = "symbolic link loop"
    elif os.path.islink(path) and error.errno == errno.ENOENT:
      reason = f"dangling symbolic link (to {printable(os.readlink(path))}, which does not exist)"
    else:
      reason = f"cannot read: {error.strerror or error}"
    bad.append((path, reason))
    return []
  if stat.S_ISDIR(info.st_mode) and ancestors is not None:
    key = (info.st_dev, info.st_ino)
    if key in ancestors:
      bad.append((path, f"symbolic link loop: links to {ancestors[key]}, a folder that holds it"))
      return []
    if key in seen:
      bad.append((path, f"links to {seen[key]}, which is read already"))
      return []
    return [(path, key)]
  if stat.S_ISREG(info.st_mode):
    files.append(path)
  else:
    bad.append((path, "not a regular file (a FIFO, socket or device)"))
  return []


def list_files(root) -> List[str]:
  """Every readable non-hidden file below `root` (or `root` itself), in scan order."""
  return scan(root).files


def fingerprint(root) -> Tuple[int, int, int, int]:
  """(entries, bytes, xor and sum of modification seconds) of every entry `scan` finds, as TFX
  fingerprints an input: a changed, added or removed file (bad ones included) changes it."""
  listing = scan(root)
  count = total = xor = added = 0
  for path, follow in [(p, True) for p in listing.files] + [(p, False) for p, _ in listing.bad]:
    try:
      info = os.stat(path) if follow else os.lstat(path)
    except OSError:
      continue
    count += 1
    total += info.st_size
    xor ^= int(info.st_mtime)
    added += int(info.st_mtime)
  return count, total, xor, added


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


def resolve(data: str, image_feature: str = "image") -> Source:
  """Recognizes the kind of `data` (a path or a dataset name) from its content and checks it as
  a whole: a source that cannot be used is one SourceError naming the real reason, before
  anything runs. Single bad inputs are left to ExampleGen's bad-input policy."""
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
  listing = scan(root)
  kind, units, _ = plan_root(root, listing)
  if kind == "tfrecord":
    check_image_feature(units[0].path, image_feature)
  if fs.isdir(root):
    # Deep enough for ExampleGen's fingerprint to see every file (caching), e.g. class/file.png.
    depth = max(fs.relative(f, root).count("/") for f in listing.files) + 1
    pattern += "/".join(["*"] * depth)
  shape, item = natural_shape(units, image_feature)
  return Source(kind, input_base, pattern, natural_shape=shape, shape_from=item)


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


def _some(paths, most=3) -> str:
  shown = ", ".join(printable(p) for p in paths[:most])
  return shown + (f" and {len(paths) - most} more" if len(paths) > most else "")


def source_kind(root, files) -> Tuple[str, dict]:
  """(the source's kind, each file's kind); `images` unless some files are IDX, NPZ or TFRecord,
  in which case every file must be of that kind."""
  kinds = {f: file_kind(f) for f in files}
  found = sorted({k for k in kinds.values() if k})
  others = [f for f in files if kinds[f] is None]
  if len(found) > 1 or (found and others):
    groups = [(kind, [f for f in files if kinds[f] == kind]) for kind in found]
    groups += [("other (images or unknown)", others)] if others else []
    raise SourceError(f"{root} mixes kinds: " + "; ".join(
        f"{len(paths)} {kind} file{'s' if len(paths) > 1 else ''} ({_some(paths)})"
        for kind, paths in groups) + ". Give one kind per source")
  return (found[0] if found else "images"), kinds


def plan_root(root, listing: Optional[Listing] = None
              ) -> Tuple[str, List[Unit], Optional[List[str]]]:
  """(kind, units of work, class names) for a file or a folder; entries that cannot be read are
  units of kind "bad", which read as a BadInput with the reason."""
  listing = listing or scan(root)
  files = listing.files
  if not files:
    if listing.bad:
      path, reason = listing.bad[0]
      raise SourceError(f"{root}: no readable file; {printable(path)}: {reason}"
                        + (f" (and {len(listing.bad) - 1} more)" if len(listing.bad) > 1 else ""))
    raise SourceError(f"{root}: no files to read (empty folder)")
  kind, _ = source_kind(root, files)
  bad = [Unit("bad", path, reason=reason) for path, reason in listing.bad]
  if kind == "images":
    names = class_names(root, files)
    label_of = {name: i for i, name in enumerate(names or [])}
    return kind, [Unit("images", f, label=label_of.get(fs.relative(f, root).split("/")[0])
                       if names else None) for f in files] + bad, names
  if kind == "idx":
    return kind, _plan_idx(files) + bad, None
  if kind == "npz":
    return kind, [u for f in files for u in _plan_npz(f)] + bad, None
  return kind, [Unit("tfrecord", f) for f in files] + bad, None


def check_image_feature(path, image_feature):
  """A TFRecord source whose first record has no `image_feature` is a wrong --image-feature (or
  not image data): one error naming the features it has, not one bad input per record."""
  for _, record in _records(path):
    if isinstance(record, images.BadInput):
      return  # a damaged file is a bad input of its own, reported by ExampleGen
    try:
      names = sorted(_example(record).features.feature)
    except ValueError:
      return  # not a tf.Example: reported per record by ExampleGen
    if image_feature not in names:
      raise SourceError(f"{path}: its records have no feature {image_feature!r} (they have: "
                        f"{', '.join(names) or 'none'}); pass --image-feature NAME")
    return


def _example(record: bytes):
  """A serialized tf.Example, parsed; ValueError if it is not one."""
  from tensorflow.core.example import example_pb2  # pylint: disable=import-outside-toplevel
  from google.protobuf import message  # pylint: disable=import-outside-toplevel
  try:
    return example_pb2.Example.FromString(record)
  except message.DecodeError as error:
    raise ValueError(f"record is not a tf.Example: {error}") from None

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
  stray = sorted(set(files) - set(images_files) - {u.labels_path for u in units})
  if stray:
    raise SourceError(f"files that are not part of an IDX images/labels pair: {_some(stray)}")
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
  if unit.kind == "bad":
    yield printable(unit.path), images.BadInput(unit.reason), unit.label
  elif unit.kind == "images":
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


def _records(path):
  """(index, serialized record) of a TFRecord file, then, if the file is cut short or damaged,
  (index, BadInput) for the record where reading stopped: the records before it are kept.

  TensorFlow's record reader, not tf.data: it checks each record's CRCs the same way but runs
  no TensorFlow op, so reading a source (as Airflow does while parsing the DAG) leaves
  TensorFlow's runtime unstarted, and a process forked afterwards (Airflow's task runner) can
  still run TensorFlow. After any eager op, a forked child's first tf.function hangs forever.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from tensorflow.python.util import deprecation  # pylint: disable=import-outside-toplevel
  options = tf.io.TFRecordOptions(compression_type="GZIP" if _is_gzip(path) else "")
  with deprecation.silence():  # "use tf.data": which is what must not run here (above)
    records = tf.compat.v1.io.tf_record_iterator(path, options)
  index = 0
  while True:
    try:
      record = next(records)
    except StopIteration:
      return
    except tf.errors.OpError as error:
      kept = f"records 0-{index - 1} are read" if index else "no record could be read"
      if "truncated" in error.message.lower():
        reason = f"truncated TFRecord file: cut short in record {index} ({kept})"
      else:  # TensorFlow's message names its op and device first: keep what it says
        said = re.sub(r"\{\{.*?\}\}\s*", "", error.message).split(" [Op:")[0].strip()
        reason = f"damaged TFRecord file at record {index} ({kept}): {said}"
      yield index, images.BadInput(reason)
      return
    yield index, record
    index += 1


def _read_tfrecord(unit, image_feature):
  for index, record in _records(unit.path):
    item = f"{unit.path}#{index}"
    if isinstance(record, images.BadInput):
      yield item, record, None
      return
    try:
      example = _example(record)
    except ValueError:
      yield item, images.BadInput("record is not a tf.Example"), None
      continue
    feature = example.features.feature
    values = feature[image_feature].bytes_list.value if image_feature in feature else []
    if len(values) != 1:
      yield item, images.BadInput(f"expected one bytes value in feature {image_feature!r}, "
                                  f"found {len(values)}"), None
      continue
    label = feature["label"].int64_list.value if "label" in feature else []
    yield item, images.FeatureBytes(values[0]), int(label[0]) if len(label) == 1 else None


# How many inputs natural_shape tries before giving up: bad inputs come first only by chance.
SHAPE_TRIES = 1000


def natural_shape(units, image_feature="image"
                  ) -> Tuple[Optional[Tuple[int, int, int]], Optional[str]]:
  """(shape, item) of the first readable image among a source's units, for a default
  --image-shape; (None, None) if none of the first SHAPE_TRIES inputs is a readable image (raw
  TFRecord pixels carry no shape). The unreadable ones are reported by ExampleGen."""
  tries = 0
  for unit in units:
    for item, payload, _ in read(unit, image_feature):
      image = None
      with contextlib.suppress(images.BadInput):
        if isinstance(payload, images.BadInput):
          pass
        elif isinstance(payload, bytes):
          image = images.open_image(payload)
        else:
          image = images.array_to_image(payload)
      if image is not None:
        channels = 1 if image.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F") else 3
        return (image.height, image.width, channels), item
      tries += 1
      if tries >= SHAPE_TRIES:
        return None, None
  return None, None
