"""Ingestion through the real ImageExampleGen component (LocalDagRunner, SQLite ML Metadata):
every source format, spans, and every kind of bad input, with nothing ever dropped silently."""
import csv
import ctypes
import glob
import gzip
import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests import image_files as files
from vae_pipeline import local_runner
from vae_pipeline.components.image_example_gen import executor
from vae_pipeline.config import PipelineConfig
from vae_pipeline.data import sources
from vae_pipeline.data.records import to_example
from vae_pipeline.models import features


def run_example_gen(data, tmp_path, **config):
  """Runs ExampleGen alone; returns (examples as [(pixels, label)], the run's ExampleGen record)."""
  run = local_runner.run_example_gen(
      PipelineConfig(data=str(data), output_dir=str(tmp_path / "out"), **config))
  return read_examples(run.outputs["examples"][0]), run


def read_examples(uri):
  spec = {features.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
          features.LABEL_KEY: tf.io.VarLenFeature(tf.int64)}
  found = []
  for path in sorted(glob.glob(os.path.join(uri, "Split-*", "*.gz"))):
    for record in tf.data.TFRecordDataset(path, compression_type="GZIP"):
      parsed = tf.io.parse_single_example(record, spec)
      labels = parsed[features.LABEL_KEY].values.numpy()
      found.append((tf.io.decode_png(parsed[features.IMAGE_KEY]).numpy(),
                    int(labels[0]) if len(labels) else None))
  return found


def bad_inputs(run):
  with open(os.path.join(run.outputs["examples"][0], executor.BAD_INPUTS_FILE)) as f:
    return {row["input"]: row["reason"] for row in csv.DictReader(f)}


def write(path, data):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)
  return path


@pytest.fixture(scope="module")
def ten_digits(digits):
  return digits[0][:10], digits[1][:10]


# ---------------------------------------------------------------------------------- formats


def test_folder_with_class_subfolders_gives_labels(tmp_path, ten_digits):
  images, labels = ten_digits
  for i, (image, label) in enumerate(zip(images, labels)):
    fmt = ["PNG", "JPEG", "BMP", "GIF", "WEBP"][i % 5]
    write(tmp_path / "data" / f"digit-{label}" / f"{i}.img",
          files.encode(Image.fromarray(image[..., 0]), fmt, **({"lossless": True} if fmt == "WEBP" else {})))
  examples, run = run_example_gen(tmp_path / "data", tmp_path)
  assert len(examples) == 10
  names = sorted({f"digit-{label}" for label in labels})
  assert run.properties["examples"][executor.LABEL_NAMES] == str(names).replace("'", '"')
  got = sorted((names[label], pixels.sum() // 1000) for pixels, label in examples)
  assert [name for name, _ in got] == sorted(f"digit-{label}" for label in labels)
  assert run.properties["examples"][executor.INPUT_COUNT] == 10
  assert run.properties["examples"][executor.BAD_INPUT_COUNT] == 0


def test_idx_files_with_labels(tmp_path, ten_digits):
  images, labels = ten_digits
  write(tmp_path / "mnist" / "train-images-idx3-ubyte.gz", gzip.compress(files.idx_bytes(images[..., 0])))
  write(tmp_path / "mnist" / "train-labels-idx1-ubyte.gz", gzip.compress(files.idx_bytes(labels)))
  write(tmp_path / "mnist" / "t10k-images-idx3-ubyte", files.idx_bytes(images[:3, ..., 0]))
  assert sources.resolve(str(tmp_path / "mnist")).kind == "idx"
  examples, _ = run_example_gen(tmp_path / "mnist", tmp_path)
  assert len(examples) == 13
  labelled = sorted((int(p.sum()), l) for p, l in examples if l is not None)
  assert labelled == sorted((int(i.sum()), int(l)) for i, l in zip(images, labels))
  assert sum(l is None for _, l in examples) == 3  # the test images come without labels file


def test_npz_in_keras_layout_and_single_array(tmp_path, ten_digits):
  images, labels = ten_digits
  np.savez(tmp_path / "keras.npz", x_train=images[:6, ..., 0], y_train=labels[:6],
           x_test=images[6:, ..., 0], y_test=labels[6:])
  examples, _ = run_example_gen(tmp_path / "keras.npz", tmp_path / "a")
  assert sorted(l for _, l in examples) == sorted(labels.tolist())
  # A single array of RGB images, floats in [0, 1].
  np.savez(tmp_path / "single.npz", np.random.default_rng(0).uniform(size=(5, 32, 32, 3)))
  examples, _ = run_example_gen(tmp_path / "single.npz", tmp_path / "b")
  assert len(examples) == 5 and examples[0][0].shape == (32, 32, 3)
  assert all(l is None for _, l in examples)


def test_tfrecords_with_encoded_or_raw_images(tmp_path, ten_digits):
  images, labels = ten_digits
  os.makedirs(tmp_path / "tfr")
  with tf.io.TFRecordWriter(str(tmp_path / "tfr" / "encoded.tfrecord")) as writer:
    for image, label in zip(images[:4], labels[:4]):
      writer.write(to_example(image, int(label)).SerializeToString())
  with tf.io.TFRecordWriter(str(tmp_path / "tfr" / "raw.tfrecord.gz"), options="GZIP") as writer:
    for image in images[4:]:
      raw = tf.train.Example(features=tf.train.Features(feature={"pixels": tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[image.tobytes()]))}))
      writer.write(raw.SerializeToString())
  # Each file in its own run: the image feature is named per source.
  examples, _ = run_example_gen(tmp_path / "tfr" / "encoded.tfrecord", tmp_path / "a")
  assert sorted(l for _, l in examples) == sorted(labels[:4].tolist())
  examples, _ = run_example_gen(tmp_path / "tfr" / "raw.tfrecord.gz", tmp_path / "b",
                                image_shape=(28, 28, 1), image_feature="pixels")
  assert sorted(int(p.sum()) for p, _ in examples) == sorted(int(i.sum()) for i in images[4:])


def test_keras_datasets_come_from_the_keras_cache(tmp_path, monkeypatch, ten_digits):
  images, labels = ten_digits
  monkeypatch.setenv("HOME", str(tmp_path))
  cache = tmp_path / ".keras" / "datasets"
  os.makedirs(cache)
  np.savez(cache / "mnist.npz", x_train=images[..., 0], y_train=labels,
           x_test=images[:2, ..., 0], y_test=labels[:2])
  for name in ("train", "t10k"):
    write(cache / "fashion-mnist" / f"{name}-images-idx3-ubyte.gz", gzip.compress(files.idx_bytes(images[:4, ..., 0])))
    write(cache / "fashion-mnist" / f"{name}-labels-idx1-ubyte.gz", gzip.compress(files.idx_bytes(labels[:4])))
  assert sources.resolve("mnist").kind == "npz"
  assert sources.resolve("fashion_mnist").kind == "idx"
  examples, _ = run_example_gen("mnist", tmp_path / "a")
  assert len(examples) == 12


def test_rgb_target_shape_with_resize_and_pad(tmp_path):
  write(tmp_path / "data" / "wide.png", files.encode(Image.new("RGB", (60, 30), (0, 255, 0))))
  write(tmp_path / "data" / "small.png", files.encode(files.gray(255, (16, 16))))
  examples, _ = run_example_gen(tmp_path / "data", tmp_path / "a", image_shape=(32, 32, 3),
                                size_policy="pad")
  shapes = {p.shape for p, _ in examples}
  assert shapes == {(32, 32, 3)}
  wide = next(p for p, _ in examples if p[..., 1].max() == 255 and p[..., 0].max() == 0)
  assert wide[0].max() == 0 and wide[16, :, 1].min() == 255  # black bars above, green middle


# ---------------------------------------------------------------------------------- spans


def test_the_latest_span_is_read_and_older_spans_stay_readable(tmp_path, ten_digits):
  images, _ = ten_digits
  for i in range(3):
    write(tmp_path / "data" / "span-1" / f"{i}.png", files.encode(Image.fromarray(images[i, ..., 0])))
  _, first = run_example_gen(tmp_path / "data", tmp_path)
  for i in range(3, 8):
    write(tmp_path / "data" / "span-2" / f"{i}.png", files.encode(Image.fromarray(images[i, ..., 0])))
  examples, second = run_example_gen(tmp_path / "data", tmp_path)
  assert len(examples) == 5
  assert len(read_examples(first.outputs["examples"][0])) == 3  # span 1's examples are still there
  assert first.properties["examples"]["span"] == 1
  assert second.properties["examples"]["span"] == 2


def test_a_source_on_another_file_system_is_read_through_tensorflow(tmp_path, ten_digits):
  """A cluster's data lives at gs://...: the same code path, shown with TensorFlow's in-memory
  ram:// file system. Spans, class folders, NPZ and a bad input, and nothing on local disk."""
  images, labels = ten_digits
  root = f"ram://{tmp_path.name}/digits"

  def put(path, data):
    tf.io.gfile.makedirs(os.path.dirname(path))  # ram:// lists only folders made as such
    with tf.io.gfile.GFile(path, "wb") as f:
      f.write(data)

  png = lambda i: files.encode(Image.fromarray(images[i, ..., 0]))
  for i in range(6):
    put(f"{root}/span-1/{labels[i]}/{i}.png", png(i))
  put(f"{root}/span-2/{labels[0]}/truncated.png", png(0)[:40])
  for i in range(6, 10):
    put(f"{root}/span-2/{labels[i]}/{i}.png", png(i))
  source = sources.resolve(root)
  assert (source.input_base, source.pattern, source.kind) == (root, "span-{SPAN}/*/*", "images")
  examples, run = run_example_gen(root, tmp_path, max_bad_fraction=0.5)
  assert run.properties["examples"]["span"] == 2
  names = sorted({str(labels[0])} | {str(label) for label in labels[6:10]})
  assert sorted(label for _, label in examples) == sorted(
      names.index(str(label)) for label in labels[6:10])
  assert list(bad_inputs(run)) == [f"{root}/span-2/{labels[0]}/truncated.png"]
  buffer = io.BytesIO()
  np.savez(buffer, x_train=images[:4], y_train=labels[:4])
  npz = f"ram://{tmp_path.name}/arrays/digits.npz"
  put(npz, buffer.getvalue())
  examples, _ = run_example_gen(npz, tmp_path / "npz")
  assert sorted(label for _, label in examples) == sorted(labels[:4])


# ---------------------------------------------------------------------------------- bad inputs


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory, ten_digits):
  """Three good digits and one of each kind of bad input, in one folder."""
  folder = tmp_path_factory.mktemp("bad")
  images, _ = ten_digits
  for i in range(3):
    write(folder / f"good-{i}.png", files.encode(Image.fromarray(images[i, ..., 0])))
  write(folder / "jpeg-named.png", files.encode(Image.fromarray(images[3, ..., 0]), "JPEG"))  # fine
  write(folder / "cmyk.jpg", files.encode(Image.new("CMYK", (28, 28)), "JPEG"))  # fine
  write(folder / "sixteen-bit.png", files.encode(Image.fromarray(np.full((28, 28), 999, np.uint16))))  # fine
  write(folder / "alpha.png", files.encode(Image.new("LA", (28, 28), (255, 128))))  # fine
  bad = {
      "empty.png": (b"", "empty file"),
      "truncated.png": (files.truncated_png(), "truncated"),
      "text.png": (b"hello\n", "not an image"),
      "notes.txt": (b"some notes\n", "not an image"),
      "bomb.png": (files.png_claiming_size(50_000, 50_000), "decompression-bomb"),
  }
  for name, (data, _) in bad.items():
    write(folder / name, data)
  return folder, {str(folder / name): reason for name, (_, reason) in bad.items()}


def test_bad_inputs_stop_the_run_naming_each_file_and_why(bad_folder, tmp_path):
  folder, bad = bad_folder
  with pytest.raises(executor.BadInputsError) as error:
    run_example_gen(folder, tmp_path)
  message = str(error.value)
  assert message.startswith("5 of 12 inputs could not be used")
  for path, reason in bad.items():
    line = next(l for l in message.splitlines() if l.strip().startswith(path + ":"))
    assert reason in line, line
  kept = message.splitlines()[-1].split(": ", 1)[1]
  with open(kept) as f:
    assert {row["input"] for row in csv.DictReader(f)} == set(bad)


def test_with_max_bad_fraction_bad_inputs_are_skipped_and_every_one_recorded(bad_folder, tmp_path):
  folder, bad = bad_folder
  examples, run = run_example_gen(folder, tmp_path, max_bad_fraction=0.5)
  recorded = bad_inputs(run)
  assert set(recorded) == set(bad)
  for path, reason in bad.items():
    assert reason in recorded[path]
  # Nothing dropped silently: every file is an example or a recorded bad input.
  assert len(examples) + len(recorded) == len(sources.list_files(str(folder))) == 12
  assert run.properties["examples"][executor.BAD_INPUT_COUNT] == 5


def test_too_many_bad_inputs_still_fail_with_a_fraction_set(bad_folder, tmp_path):
  with pytest.raises(executor.BadInputsError, match="allowed: --max-bad-fraction 0.2"):
    run_example_gen(bad_folder[0], tmp_path, max_bad_fraction=0.2)


def test_npz_with_nan_or_out_of_range_images_names_each(tmp_path):
  array = np.full((4, 28, 28), 100.0)
  array[1, 0, 0] = np.nan
  array[3, 5, 5] = 256.0
  np.savez(tmp_path / "x.npz", images=array)
  with pytest.raises(executor.BadInputsError) as error:
    run_example_gen(tmp_path / "x.npz", tmp_path)
  assert f"{tmp_path / 'x.npz'}:images[1]: 1 NaN or infinite values" in str(error.value)
  assert f"{tmp_path / 'x.npz'}:images[3]: values outside 0-255" in str(error.value)


def _without_root_file_access():
  """For a child process run as root: drop the capabilities that let root read any file, so
  file permissions apply to it as to any user (prctl PR_CAPBSET_DROP, before exec)."""
  libc = ctypes.CDLL(None, use_errno=True)
  for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
    if libc.prctl(24, capability, 0, 0, 0) != 0:
      raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_unreadable_file_is_a_bad_input(tmp_path, ten_digits):
  """Permission denied, for real, in a child process that cannot bypass file permissions."""
  folder = tmp_path / "perm"
  write(folder / "locked.png", files.encode(Image.fromarray(ten_digits[0][0, ..., 0])))
  write(folder / "fine.png", files.encode(Image.fromarray(ten_digits[0][1, ..., 0])))
  os.chmod(folder / "locked.png", 0)
  script = ("from vae_pipeline.data import sources\n"
            f"_, units, _ = sources.plan_root({str(folder)!r})\n"
            "for unit in units:\n"
            "  for item, payload, _ in sources.read(unit):\n"
            "    print(item, type(payload).__name__, payload if not isinstance(payload, bytes) else '')")
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          preexec_fn=_without_root_file_access if os.geteuid() == 0 else None,
                          timeout=120)
  lines = result.stdout.splitlines()
  assert f"{folder / 'fine.png'} bytes " in lines, result.stdout + result.stderr
  assert f"{folder / 'locked.png'} BadInput cannot read: Permission denied" in lines


# ---------------------------------------------------------------------------------- sources


@pytest.mark.parametrize("make, message", [
    (lambda p: os.makedirs(p / "empty"), "no files to read (empty folder)"),
    (lambda p: None, "no such file or folder"),
])
def test_unusable_sources_are_one_clear_error(tmp_path, make, message):
  make(tmp_path)
  target = tmp_path / ("empty" if "empty" in message else "missing")
  with pytest.raises(sources.SourceError, match=re.escape(message)):
    sources.resolve(str(target))


def test_idx_header_that_does_not_match_the_file_size(tmp_path, ten_digits):
  data = files.idx_bytes(ten_digits[0][..., 0])
  write(tmp_path / "m" / "train-images-idx3-ubyte", data[:-100])
  with pytest.raises(sources.SourceError, match="IDX header says 10 x 28 x 28"):
    sources.plan_root(str(tmp_path / "m"))


def test_idx_labels_with_another_count(tmp_path, ten_digits):
  images, labels = ten_digits
  write(tmp_path / "m" / "train-images-idx3-ubyte", files.idx_bytes(images[..., 0]))
  write(tmp_path / "m" / "train-labels-idx1-ubyte", files.idx_bytes(labels[:7]))
  with pytest.raises(sources.SourceError, match="has 10 images but .* has 7 labels"):
    sources.plan_root(str(tmp_path / "m"))


def test_npz_needing_pickle_is_refused(tmp_path):
  np.savez(tmp_path / "objects.npz", x_train=np.array([{"a": 1}], dtype=object))
  with pytest.raises(sources.SourceError, match="without pickle"):
    sources.plan_root(str(tmp_path / "objects.npz"))
