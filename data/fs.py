"""File access for data sources: local paths through the OS (its errors and permissions, as a user
expects them), URIs such as gs://bucket/digits through TensorFlow's file systems, which is what
ExampleGen reads on a cluster. TensorFlow is imported only when a URI is used."""
import os
from typing import BinaryIO, Iterator, List, Tuple


def is_uri(path) -> bool:
  return "://" in str(path)


def _gfile():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel  (seconds: only for URIs)
  return tf.io.gfile


def exists(path) -> bool:
  return _gfile().exists(path) if is_uri(path) else os.path.exists(path)


def isdir(path) -> bool:
  return _gfile().isdir(path) if is_uri(path) else os.path.isdir(path)


def isfile(path) -> bool:
  if is_uri(path):
    return _gfile().exists(path) and not _gfile().isdir(path)
  return os.path.isfile(path)


def listdir(path) -> List[str]:
  if is_uri(path):
    return [name.rstrip("/") for name in _gfile().listdir(path)]
  return os.listdir(path)


def walk(root) -> Iterator[Tuple[str, List[str], List[str]]]:
  """As os.walk, top-down: prune by editing the yielded folder list in place."""
  if not is_uri(root):
    yield from os.walk(root)
    return
  for folder, subfolders, files in _gfile().walk(root):
    subfolders[:] = [name.rstrip("/") for name in subfolders]
    yield folder.rstrip("/"), subfolders, files


def open_binary(path) -> BinaryIO:
  return _gfile().GFile(path, "rb") if is_uri(path) else open(path, "rb")


def abspath(path) -> str:
  return path.rstrip("/") if is_uri(path) else os.path.abspath(path)


def relative(path, root) -> str:
  """`path` relative to the folder `root`, with '/' separators."""
  if is_uri(path):
    return path[len(root.rstrip("/")) + 1:]
  return os.path.relpath(path, root)
