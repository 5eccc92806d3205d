"""Bad input, tried adversarially (issue 20): folders with symbolic links, loops, names that are
not UTF-8, unreadable folders, files that only look like raw pixels, cut-short TFRecord files,
and sources that are unusable as a whole. Each ends named in an error, or skipped and recorded
in bad_inputs.csv under --max-bad-fraction: never lost, never trained on."""
import contextlib
import io
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests import image_files as files
from tests.test_ingest import _without_root_file_access, bad_inputs, run_example_gen, write
from vae_pipeline.cli import main as cli
from vae_pipeline.components.image_example_gen import executor
from vae_pipeline.data import images as image_lib
from vae_pipeline.data import sources
from vae_pipeline.data.records import to_example

NOT_UTF8 = b"caf\xe9.png"  # Latin-1, as an old camera or a Windows share writes it


def png(pixels):
  return files.encode(Image.fromarray(pixels[..., 0]))


@pytest.fixture(scope="module")
def tricky_folder(tmp_path_factory, digits):
  """Class folders `one` and `zero` (4 digits each), `two` a symbolic link to a folder elsewhere
  (4 digits), and one of each troublesome entry. Returns (folder, {entry: reason})."""
  base = tmp_path_factory.mktemp("tricky")
  folder = base / "src"
  images = digits[0]
  for c, name in enumerate(["one", "zero"]):
    for i in range(4):
      write(folder / name / f"{i}.png", png(images[4 * c + i]))
  for i in range(4):
    write(base / "elsewhere" / "two" / f"{i}.png", png(images[8 + i]))
  os.symlink(base / "elsewhere" / "two", folder / "two")
  cut = files.encode(files.noise())  # incompressible: well over 784 bytes
  bad = {
      # Alphabetically first of all: the shape comes from the first readable image instead.
      folder / "one" / "0-empty.png": (b"", "empty file"),
      folder / "one" / "raw-sized.png": (b"x" * 784, "not an image"),  # 28 x 28 x 1 bytes of text
      folder / "one" / "cut.png": (cut[:784], "corrupt or truncated"),  # a PNG cut to 784
  }
  for path, (data, _) in bad.items():
    write(path, data)
  os.symlink(folder, folder / "zero" / "up")
  os.symlink("loop-b.png", folder / "zero" / "loop-a.png")
  os.symlink("loop-a.png", folder / "zero" / "loop-b.png")
  os.symlink("missing.png", folder / "zero" / "broken.png")
  with open(os.fsencode(folder / "zero") + b"/" + NOT_UTF8, "wb") as f:
    f.write(png(images[13]))
  expected = {str(path): reason for path, (_, reason) in bad.items()}
  expected.update({
      str(folder / "zero" / "up"): "symbolic link loop: links to " + str(folder),
      str(folder / "zero" / "loop-a.png"): "symbolic link loop",
      str(folder / "zero" / "loop-b.png"): "symbolic link loop",
      str(folder / "zero" / "broken.png"): "dangling symbolic link (to missing.png",
      str(folder / "zero") + "/caf\\xe9.png": "its name is not valid UTF-8",
  })
  return folder, expected


def every_entry(folder):
  """Files and links in `folder`, counted without following links, plus the files of the folder
  `two` links to: what a user sees with `ls -R` and expects to be accounted for."""
  count = 0
  for parent, folders, names in os.walk(folder):  # links to folders are listed, not entered
    count += len(names) + sum(os.path.islink(os.path.join(parent, d)) for d in folders)
  return count - 1 + len(os.listdir(os.path.join(folder, "two")))  # `two` counts as its files


def test_tricky_entries_stop_the_run_each_named_with_its_reason(tricky_folder, tmp_path):
  folder, expected = tricky_folder
  with pytest.raises(executor.BadInputsError) as error:
    run_example_gen(folder, tmp_path)
  message = str(error.value)
  assert message.startswith(f"{len(expected)} of 20 inputs could not be used")
  for entry, reason in expected.items():
    line = next(l for l in message.splitlines() if l.strip().startswith(entry + ":"))
    assert reason in line, line


def test_with_max_bad_fraction_links_are_followed_and_every_entry_is_accounted_for(
    tricky_folder, tmp_path):
  folder, expected = tricky_folder
  examples, run = run_example_gen(folder, tmp_path, max_bad_fraction=0.5)
  recorded = bad_inputs(run)
  assert set(recorded) == set(expected)
  for entry, reason in expected.items():
    assert reason in recorded[entry]
  # The linked class folder is a class like the others: 12 digits in three classes.
  assert len(examples) == 12
  assert run.properties["examples"][executor.LABEL_NAMES] == '["one", "two", "zero"]'
  assert sorted(label for _, label in examples) == [0] * 4 + [1] * 4 + [2] * 4
  # Nothing lost: examples + recorded bad inputs = every entry of the source.
  assert len(examples) + len(recorded) == every_entry(folder) == 20
  assert run.properties["examples"][executor.INPUT_COUNT] == 20
  # No 784-byte file became an image: every example is one of the digits written.
  assert all(pixels.std() > 20 for pixels, _ in examples)


def test_a_changed_bad_entry_changes_the_fingerprint(tmp_path, digits):
  """The driver's own fingerprint keeps TFX's caching: any entry added, removed or changed."""
  folder = tmp_path / "f"
  write(folder / "a.png", png(digits[0][0]))
  before = sources.fingerprint(str(folder))
  os.symlink("nowhere.png", folder / "b.png")
  after_link = sources.fingerprint(str(folder))
  assert after_link != before and after_link[0] == 2
  os.remove(folder / "b.png")
  assert sources.fingerprint(str(folder)) == before


def test_an_unreadable_folder_is_a_bad_input(tmp_path, digits):
  """Mode 000, for real, in a child process that cannot bypass file permissions."""
  folder = tmp_path / "perm"
  write(folder / "a" / "fine.png", png(digits[0][0]))
  write(folder / "b" / "hidden.png", png(digits[0][1]))
  os.chmod(folder / "b", 0)
  try:
    script = ("from vae_pipeline.data import sources\n"
              f"_, units, names = sources.plan_root({str(folder)!r})\n"
              "print(names)\n"
              "for unit in units:\n"
              "  for item, payload, _ in sources.read(unit):\n"
              "    print(item, type(payload).__name__, payload if not isinstance(payload, bytes) else '')")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            preexec_fn=_without_root_file_access if os.geteuid() == 0 else None,
                            timeout=120)
  finally:
    os.chmod(folder / "b", 0o755)
  lines = result.stdout.splitlines()
  assert f"{folder / 'a' / 'fine.png'} bytes " in lines, result.stdout + result.stderr
  assert f"{folder / 'b'} BadInput cannot read folder: Permission denied" in lines


def test_raw_pixels_only_from_a_tfrecord_feature():
  """784 bytes are a 28x28x1 image only where the format says so."""
  text = b"x" * 784
  with pytest.raises(image_lib.BadInput, match="not an image"):
    image_lib.normalize(text, (28, 28, 1))
  pixels = image_lib.normalize(image_lib.FeatureBytes(bytes(range(256)) * 3 + bytes(16)), (28, 28, 1))
  assert pixels.shape == (28, 28, 1) and pixels[0, 1, 0] == 1


def test_a_cut_short_tfrecord_keeps_the_records_before_the_cut(tmp_path, digits):
  folder = tmp_path / "tfr"
  os.makedirs(folder)
  with tf.io.TFRecordWriter(str(folder / "whole.tfrecord")) as writer:
    for image, label in zip(digits[0][:5], digits[1][:5]):
      writer.write(to_example(image, int(label)).SerializeToString())
  with tf.io.TFRecordWriter(str(folder / "cut.tfrecord")) as writer:
    for image, label in zip(digits[0][5:15], digits[1][5:15]):
      writer.write(to_example(image, int(label)).SerializeToString())
  data = (folder / "cut.tfrecord").read_bytes()
  record = len(data) // 10
  (folder / "cut.tfrecord").write_bytes(data[:6 * record + record // 2])  # in record 6
  with pytest.raises(executor.BadInputsError, match=r"cut.tfrecord#6: truncated TFRecord file: "
                     r"cut short in record 6 \(records 0-5 are read\)"):
    run_example_gen(folder, tmp_path / "strict")
  examples, run = run_example_gen(folder, tmp_path / "lenient", max_bad_fraction=0.2)
  assert len(examples) == 5 + 6
  assert list(bad_inputs(run)) == [f"{folder / 'cut.tfrecord'}#6"]


def run_cli(*args):
  """`vae-pipeline run ...` through the CLI's entry point: (exit code, stderr)."""
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    code = cli.main(["run", *args])
  return code, err.getvalue()


def unusable_sources(root, digits):
  images, labels = digits[0][:10], digits[1][:10]
  made = {}
  np.savez(root / "objects.npz", x_train=np.array([{"a": 1}], dtype=object))
  made["npz needing pickle"] = (root / "objects.npz", "objects.npz: cannot be read without pickle")
  idx = files.idx_bytes(images[..., 0])
  write(root / "idx-size" / "train-images-idx3-ubyte", idx[:-100])
  made["IDX header against its size"] = (root / "idx-size", "IDX header says 10 x 28 x 28")
  write(root / "idx-labels" / "train-images-idx3-ubyte", idx)
  write(root / "idx-labels" / "train-labels-idx1-ubyte", files.idx_bytes(labels[:7]))
  made["IDX labels of another count"] = (root / "idx-labels", "has 10 images but")
  os.makedirs(root / "tfr")
  with tf.io.TFRecordWriter(str(root / "tfr" / "a.tfrecord")) as writer:
    for image in images:
      writer.write(tf.train.Example(features=tf.train.Features(feature={"pixels": tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[png(image)]))})).SerializeToString())
  made["TFRecord image feature of another name"] = (
      root / "tfr", "its records have no feature 'image' (they have: pixels); pass --image-feature")
  for i in range(5):
    write(root / "mix" / f"{i}.png", png(images[i]))
  np.savez(root / "mix" / "extra.npz", x=images)
  made["a stray NPZ among PNGs"] = (
      root / "mix", "mix mixes kinds: 1 npz file (" + str(root / "mix" / "extra.npz") + "); "
      "5 other (images or unknown) files")
  write(root / "tiny" / "a.png", files.encode(Image.new("L", (1, 1))))
  made["a 1x1 first image"] = (root / "tiny", f"got 1x1 (the shape of the first image, "
                                              f"{root / 'tiny' / 'a.png'})")
  return made


@pytest.mark.parametrize("shape_given", [False, True])
def test_an_unusable_source_is_one_line_naming_the_real_reason_before_anything_runs(
    tmp_path, digits, shape_given):
  for case, (data, reason) in unusable_sources(tmp_path, digits).items():
    if shape_given and "1x1" in case:
      continue  # --image-shape brings it to a usable size: not an error then
    out = tmp_path / f"out-{case}".replace(" ", "-")
    code, err = run_cli("--data", str(data), "--output-dir", str(out),
                        *(["--image-shape", "28x28x1"] if shape_given else []))
    assert code == 2, (case, err)
    assert len(err.strip().splitlines()) == 1, (case, err)
    assert reason in err, (case, err)
    assert "cannot tell the image shape" not in err, (case, err)
    assert not out.exists(), case  # nothing ran, nothing written


def test_the_shape_comes_from_the_first_readable_image(tmp_path, digits):
  folder = tmp_path / "f"
  write(folder / "a-empty.png", b"")
  write(folder / "b-notanimage.png", b"hello")
  write(folder / "c-truncated.png", files.truncated_png())
  for i in range(3):
    write(folder / f"d{i}.png", files.encode(Image.fromarray(np.pad(digits[0][i][..., 0], 2))))
  source = sources.resolve(str(folder))
  assert source.natural_shape == (32, 32, 1)
  assert source.shape_from == str(folder / "d0.png")
  with pytest.raises(executor.BadInputsError) as error:  # then the bad ones are each named
    run_example_gen(folder, tmp_path)
  for name in ("a-empty.png", "b-notanimage.png", "c-truncated.png"):
    assert str(folder / name) + ":" in str(error.value)


def test_a_folder_with_nothing_readable_says_so(tmp_path):
  folder = tmp_path / "f"
  os.makedirs(folder)
  os.symlink("missing.png", folder / "broken.png")
  with pytest.raises(sources.SourceError, match="no readable file; .*broken.png: dangling"):
    sources.resolve(str(folder))


def test_a_wrong_image_feature_in_a_later_file_is_still_per_record(tmp_path, digits):
  """The source check reads the first record; later records keep the per-record reason."""
  write(tmp_path / "t" / "x", b"")
  os.remove(tmp_path / "t" / "x")
  with tf.io.TFRecordWriter(str(tmp_path / "t" / "a.tfrecord")) as writer:
    writer.write(to_example(digits[0][0], 1).SerializeToString())
    writer.write(tf.train.Example().SerializeToString())
  _, units, _ = sources.plan_root(str(tmp_path / "t"))
  reasons = [str(p) for _, p, _ in sources.read(units[0]) if isinstance(p, image_lib.BadInput)]
  assert reasons == ["expected one bytes value in feature 'image', found 0"]
