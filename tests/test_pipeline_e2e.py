"""The real pipeline, end to end, on a few hundred unlabeled digits: real TFX components, a real
ML Metadata store, real SavedModels. Run 1 goes through the `vae-pipeline` command; run 2 (a
clearly worse candidate) and the anomalies run go through the local runner in this process.
"""
import csv
import glob
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from vae_pipeline import local_runner
from vae_pipeline import summary as summary_lib
from vae_pipeline.components.anomalies_gate.executor import DataAnomaliesError
from vae_pipeline.config import PipelineConfig
from vae_pipeline.data.records import to_example
from vae_pipeline.models import export
from vae_pipeline.models import features
from vae_pipeline.models import trainer
from vae_pipeline.models import vae as vae_lib

pytestmark = pytest.mark.e2e

NUM_IMAGES = 400
# Two training processes (the default gives a short training at batch 32 one): the Trainer's
# processes run under TFX here.
FIRST_RUN = ["--epochs", "3", "--batch-size", "32", "--latent-dim", "2", "--learning-rate", "2e-3",
             "--max-loss", "1000", "--train-workers", "2"]
ALL_COMPONENTS = {"ExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "AnomaliesGate",
                  "Transform", "Trainer", "latest_blessed_model_resolver", "Evaluator", "Pusher",
                  "RunReport"}
CLI = os.path.join(os.path.dirname(sys.executable), "vae-pipeline")


@pytest.fixture(scope="module")
def unlabeled_data(tmp_path_factory, digits):
  """A folder with one TFRecord file of raw examples that have an image and no label."""
  folder = tmp_path_factory.mktemp("data")
  with tf.io.TFRecordWriter(str(folder / "digits.tfrecord.gz"), options="GZIP") as writer:
    for image in digits[0][:NUM_IMAGES]:
      writer.write(to_example(image).SerializeToString())
  return str(folder)


@pytest.fixture(scope="module")
def first_run(unlabeled_data, tmp_path_factory):
  output_dir = str(tmp_path_factory.mktemp("outputs"))
  result = subprocess.run(
      [CLI, "run", "--data", unlabeled_data, "--output-dir", output_dir] + FIRST_RUN,
      capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  config = PipelineConfig(data=unlabeled_data, output_dir=output_dir)
  return config, summary_lib.summarize(config.metadata_path), result.stdout


@pytest.fixture(scope="module")
def served(first_run, tmp_path_factory):
  """The pushed model's serving_default outputs on the whole eval split, from a fresh process
  that never imports this project (and leaves Keras at its default)."""
  config, summary, _ = first_run
  eval_files = glob.glob(os.path.join(
      summary.component("ExampleGen").outputs["examples"][0], "Split-eval", "*"))
  out = str(tmp_path_factory.mktemp("served") / "outputs.npz")
  script = textwrap.dedent(f"""
      import sys
      import numpy as np
      import tensorflow as tf
      model = tf.saved_model.load({summary.pushed_dir!r})
      serve = model.signatures["serving_default"]
      records = [r.numpy() for r in tf.data.TFRecordDataset({eval_files!r}, compression_type="GZIP")]
      outputs = serve(examples=tf.constant(records))
      evaluated = model.signatures["evaluate"](examples=tf.constant(records))
      outputs.update({{"evaluate/" + k: v for k, v in evaluated.items()}})
      for name in ("encode", "score"):
        called = model.signatures[name](examples=tf.constant(records))
        outputs.update({{name + "/" + k: v for k, v in called.items()}})
      # One example at a time (the first and the last), and decode on the whole batch.
      ones = [serve(examples=tf.constant(records[i:i + 1])) for i in (0, len(records) - 1)]
      for key in ("loss", "reconstruction"):
        outputs["one/" + key] = tf.concat([one[key] for one in ones], 0)
      outputs["decode/images"] = model.signatures["decode"](z=outputs["z_mean"])["images"]
      generate = model.signatures["generate"]
      outputs["generate/a"] = generate(count=tf.constant(6), seed=tf.constant(7, tf.int64))["images"]
      outputs["generate/b"] = generate(count=tf.constant(6), seed=tf.constant(7, tf.int64))["images"]
      outputs["generate/c"] = generate(count=tf.constant(6), seed=tf.constant(8, tf.int64))["images"]
      images = [tf.io.decode_png(tf.io.parse_single_example(r, {{"image": tf.io.FixedLenFeature([], tf.string)}})["image"]).numpy() for r in records]
      assert not any(name.startswith("vae_pipeline") for name in sys.modules)
      np.savez({out!r}, inputs=np.stack(images), **{{k: v.numpy() for k, v in outputs.items()}})
      """)
  env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, env=env, cwd=str(tmp_path_factory.mktemp("elsewhere")))
  assert result.returncode == 0, result.stderr[-3000:]
  return dict(np.load(out))


def test_first_run_executes_every_component(first_run):
  config, summary, stdout = first_run
  states = {c.component: c.state for c in summary.components}
  assert set(states) == ALL_COMPONENTS
  assert set(states.values()) == {"COMPLETE"}, states
  assert summary.metrics["example_count"] > 0.1 * NUM_IMAGES
  # The user saw progress (the first training process prints Keras' epochs) and a summary.
  assert "Trainer ..." in stdout and "Epoch 3/3" in stdout
  assert "Blessed" in stdout and "Pushed to:" in stdout
  with open(os.path.join(summary.component("Trainer").outputs["model_run"][0],
                         features.HISTORY_FILE)) as f:
    assert json.load(f)["train_workers"] == 2


def test_first_run_is_blessed_and_pushed_under_the_serving_dir(first_run):
  config, summary, _ = first_run
  assert summary.blessed is True
  assert summary.pushed_dir.startswith(config.serving_dir + os.sep)
  assert os.path.isfile(os.path.join(summary.pushed_dir, "saved_model.pb"))


def test_signature_outputs_are_finite_and_shaped(served):
  n = served["inputs"].shape[0]
  assert served[features.RECONSTRUCTION].shape == (n, 28, 28, 1)
  assert served[features.Z_MEAN].shape == served[features.Z_LOG_VAR].shape == (n, 2)
  for name in (features.RECONSTRUCTION_LOSS, features.KL_LOSS, features.LOSS):
    assert served[name].shape == (n,)
  for value in served.values():
    assert np.all(np.isfinite(value))
  assert 0.0 <= served[features.RECONSTRUCTION].min() <= served[features.RECONSTRUCTION].max() <= 1.0


def test_reconstruction_loss_is_the_bce_of_reconstruction_and_input(served):
  x = served["inputs"].astype(np.float64) / 255.0
  p = np.clip(served[features.RECONSTRUCTION].astype(np.float64), 1e-7, 1 - 1e-7)
  bce = -(x * np.log(p) + (1 - x) * np.log(1 - p)).sum(axis=(1, 2, 3))
  # The model computes BCE from the decoder's logits; a float32 probability within ~1e-7 of 0
  # or 1 cannot carry all of that precision, so a few saturated pixels differ by up to ~0.1 nat.
  difference = np.abs(served[features.RECONSTRUCTION_LOSS] - bce)
  assert difference.max() < 0.5, difference.max()
  assert np.median(difference) < 0.01, np.median(difference)
  np.testing.assert_allclose(served[features.LOSS],
                             served[features.RECONSTRUCTION_LOSS] + served[features.KL_LOSS],
                             rtol=1e-6)


def test_the_served_graph_computes_the_trained_keras_model(first_run, served):
  """The SavedModel (forward kernels derived at export, BatchNorm folded by TensorFlow) gives
  what the Keras model computes with the weights the Trainer saved beside it."""
  _, summary, _ = first_run
  trainer_outputs = summary.component("Trainer").outputs
  with open(os.path.join(trainer_outputs["model_run"][0], features.HISTORY_FILE)) as f:
    config = json.load(f)["config"]
  model = vae_lib.build_vae(tuple(config["image_shape"]), config["latent_dim"],
                            config["hidden_units"])
  model.load_weights(trainer.weights_path(trainer_outputs["model"][0])
                     ).assert_existing_objects_matched()
  images = served["inputs"].astype(np.float32) / 255.0
  mean, log_var = model.encoder(images, training=False)
  np.testing.assert_allclose(served[features.Z_MEAN], mean.numpy(), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(served[features.Z_LOG_VAR], log_var.numpy(), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(served[features.RECONSTRUCTION],
                             model.decoder(mean, training=False).numpy(), atol=1e-4)


def test_the_pushed_model_holds_its_weights_as_constants(first_run):
  """No signature reads a variable, so a call passes nothing but its own inputs (see
  export.with_weights_as_constants); the outputs are checked against Keras above."""
  _, summary, _ = first_run
  loaded = tf.saved_model.load(summary.pushed_dir)
  assert set(loaded.signatures) == {
      features.SERVING_SIGNATURE, features.ENCODE_SIGNATURE, features.DECODE_SIGNATURE,
      features.GENERATE_SIGNATURE, features.SCORE_SIGNATURE, features.EVALUATION_SIGNATURE}
  for name, signature in loaded.signatures.items():
    assert not signature.captured_inputs, (name, len(signature.captured_inputs))


def test_evaluator_mean_loss_is_the_mean_of_the_signature_loss(first_run, served):
  _, summary, _ = first_run
  assert summary.metrics["example_count"] == served[features.LOSS].shape[0]
  for name in (features.RECONSTRUCTION_LOSS, features.KL_LOSS, features.LOSS):
    np.testing.assert_allclose(summary.metrics[name], served[name].astype(np.float64).mean(),
                               rtol=1e-5)
    np.testing.assert_allclose(served["evaluate/" + name], served[name], rtol=1e-5)
  # The bounds draw z per position in a batch and TFMA batches as it likes: equal up to the
  # Monte-Carlo noise of a mean over ~80 images of 64 draws each (a 3-epoch model's posterior
  # is a poor proposal, so allow 1%).
  for name in (features.NEG_ELBO, features.NLL_IW):
    by_hand = served["evaluate/" + name].astype(np.float64).mean()
    assert abs(summary.metrics[name] - by_hand) < 0.01 * by_hand, (name, summary.metrics[name],
                                                                   by_hand)


def test_a_large_batch_is_served_in_chunks_with_the_same_outputs(served):
  """Above export.CHUNK_SIZE a signature runs its batch as concurrent chunks (the last one
  shorter); the outputs are those of one example at a time, in order."""
  assert served["inputs"].shape[0] > export.CHUNK_SIZE
  np.testing.assert_allclose(served["one/loss"], served[features.LOSS][[0, -1]], rtol=1e-5)
  np.testing.assert_allclose(served["one/reconstruction"],
                             served[features.RECONSTRUCTION][[0, -1]], atol=1e-5)
  np.testing.assert_allclose(served["decode/images"], served[features.RECONSTRUCTION], atol=1e-5)


def test_encode_score_and_generate_signatures(served):
  # Each signature's graph, with its own copy of the constant weights, is optimized on its own,
  # so the same value can differ in the last float32 bits: atol covers values near 0.
  np.testing.assert_allclose(served["encode/" + features.Z_MEAN], served[features.Z_MEAN],
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(served["encode/" + features.Z_LOG_VAR], served[features.Z_LOG_VAR],
                             rtol=1e-5, atol=1e-5)
  # The score signature keeps the raw loss beside the anomaly score.
  np.testing.assert_allclose(served["score/" + features.LOSS], served[features.LOSS], rtol=1e-5)
  assert served["generate/a"].shape == (6, 28, 28, 1)
  assert 0.0 <= served["generate/a"].min() and served["generate/a"].max() <= 1.0
  np.testing.assert_array_equal(served["generate/a"], served["generate/b"])  # same seed
  assert not np.allclose(served["generate/a"], served["generate/c"])  # another seed


def test_the_anomaly_score_is_calibrated_on_the_eval_split(first_run, served):
  """The score, recomputed by hand from its parts and the calibration the model carries; its
  percentile and flag against the eval split it was calibrated on (models/anomaly.py)."""
  _, summary, _ = first_run
  with open(os.path.join(summary.pushed_dir, "assets.extra", "anomaly_calibration.json")) as f:
    c = json.load(f)
  score = served["score/" + features.SCORE]
  corrected = served[features.LOSS] - c["complexity_slope"] * served["score/complexity_bits"]
  centred = served[features.Z_MEAN] - np.array(c["latent_mean"])
  distance = np.einsum("ij,jk,ik->i", centred, np.array(c["latent_inverse_covariance"]), centred)
  np.testing.assert_allclose(served["score/latent_distance"], distance, rtol=1e-3, atol=1e-3)
  by_hand = np.maximum((corrected - c["corrected_median"]) / c["corrected_scale"],
                       (distance - c["distance_median"]) / c["distance_scale"])
  np.testing.assert_allclose(score, by_hand, rtol=1e-3, atol=1e-3)
  # The PNG length of each eval image, as a lossless compressor stores it.
  assert np.all(served["score/complexity_bits"] > 8 * 60)
  # Calibrated on these very images: the stored quantiles span them, the flag is the threshold.
  assert c["eval_count"] == len(score) and c["anomaly_quantile"] == 0.99
  np.testing.assert_allclose(c["score_quantiles"][0], score.min(), rtol=1e-3, atol=1e-3)
  np.testing.assert_allclose(c["score_quantiles"][-1], score.max(), rtol=1e-3, atol=1e-3)
  np.testing.assert_array_equal(served["score/is_anomaly"], score > c["threshold"])
  assert served["score/is_anomaly"].mean() <= 0.01 + 1.0 / len(score)
  percentile = served["score/percentile"]
  assert 0.0 <= percentile.min() and percentile.max() <= 1.0
  share_below = np.array([np.mean(score < s) for s in score])
  np.testing.assert_allclose(percentile, share_below, atol=0.02 + 1.0 / len(score))


def test_serving_warmup_requests_replay_against_the_pushed_model(first_run):
  """TensorFlow Serving's warm-up file: real eval examples, one PredictionLog per signature that
  takes examples; each replayed here gives what a direct call gives."""
  from vae_pipeline.models import warmup
  _, summary, _ = first_run
  logs = warmup.read(summary.pushed_dir)
  assert [log.predict_log.request.model_spec.signature_name for log in logs] == list(
      warmup.WARMUP_SIGNATURES)
  model = tf.saved_model.load(summary.pushed_dir)
  for log in logs:
    request = log.predict_log.request
    examples = tf.make_ndarray(request.inputs[features.EXAMPLES_INPUT])
    assert len(examples) == warmup.WARMUP_EXAMPLES
    image = tf.io.parse_single_example(examples[0], {
        features.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string)})[features.IMAGE_KEY]
    assert tf.io.decode_png(image).shape == (28, 28, 1)
    outputs = model.signatures[request.model_spec.signature_name](
        **{features.EXAMPLES_INPUT: tf.constant(examples)})
    assert all(np.all(np.isfinite(v.numpy())) for v in outputs.values() if v.dtype.is_floating)


def test_score_refuses_empty_or_undecodable_examples(first_run):
  """Bad input to the score signature is an error naming the problem, never a silent number
  (the CLI's score reads files through the ingestion rules first: tests/test_bad_sources.py)."""
  _, summary, _ = first_run
  score = tf.saved_model.load(summary.pushed_dir).signatures[features.SCORE_SIGNATURE]
  empty = tf.train.Example().SerializeToString()
  not_png = tf.train.Example(features=tf.train.Features(feature={features.IMAGE_KEY: tf.train.Feature(
      bytes_list=tf.train.BytesList(value=[b"not an image"]))})).SerializeToString()
  with pytest.raises(tf.errors.InvalidArgumentError, match="image"):
    score(examples=tf.constant([empty]))
  with pytest.raises(tf.errors.InvalidArgumentError, match="(?i)png|image|format"):
    score(examples=tf.constant([not_png]))


def test_saved_model_cli_shows_and_runs_the_signatures(first_run, tmp_path):
  _, summary, _ = first_run
  cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
  shown = subprocess.run([cli, "show", "--dir", summary.pushed_dir, "--all"],
                         capture_output=True, text=True, timeout=300)
  assert shown.returncode == 0, shown.stderr[-2000:]
  for signature in ("serving_default", "encode", "decode", "generate", "score", "evaluate"):
    assert f"signature_def['{signature}']" in shown.stdout
  # More images than export.CHUNK_SIZE: the decoding runs in chunks, here in a TF1-style session
  # as TensorFlow Serving runs signatures.
  count = export.CHUNK_SIZE + 6
  out = tmp_path / "generated"
  ran = subprocess.run([cli, "run", "--dir", summary.pushed_dir, "--tag_set", "serve",
                        "--signature_def", "generate", "--input_exprs",
                        f"count={count};seed=5", "--outdir", str(out)],
                       capture_output=True, text=True, timeout=300)
  assert ran.returncode == 0, ran.stderr[-2000:]
  images = np.load(out / "images.npy")
  assert images.shape == (count, 28, 28, 1) and 0.0 <= images.min() <= images.max() <= 1.0
  # The same images as an eager call in this process.
  loaded = tf.saved_model.load(summary.pushed_dir)
  eager = loaded.signatures["generate"](count=tf.constant(count), seed=tf.constant(5, tf.int64))
  np.testing.assert_allclose(images, eager["images"].numpy(), atol=1e-6)


def test_likelihood_bounds_are_ordered_per_image(served):
  neg_elbo = served["evaluate/" + features.NEG_ELBO]
  nll_iw = served["evaluate/" + features.NLL_IW]
  assert np.all(np.isfinite(neg_elbo)) and np.all(np.isfinite(nll_iw))
  # log-mean-exp of the weights >= their mean (Jensen), and E[log w] = -neg_elbo up to noise.
  assert np.mean(nll_iw < neg_elbo) > 0.9
  assert 0 < np.mean(neg_elbo - nll_iw) < 0.2 * np.mean(neg_elbo)


def test_run_summary_and_report(first_run):
  config, summary, stdout = first_run
  run_dir = local_runner.run_dir_of(summary, config)
  assert f"Run report: {run_dir}" in stdout and f"Report: {summary.report}" in stdout
  saved = json.load(open(os.path.join(run_dir, "summary.json")))
  assert saved["pushed_dir"] == summary.pushed_dir and saved["report"] == summary.report
  # Unlabelled data, latent dim 2: the decoded manifold, no per-label chart; the anomaly scores.
  folder = os.path.dirname(summary.report)
  assert sorted(glob.glob(os.path.join(folder, "*.png"))) == [
      os.path.join(folder, name) for name in ("anomaly.png", "latent.png", "manifold.png",
                                              "prior_samples.png", "reconstructions.png",
                                              "training_curves.png")]
  for name in ("reconstructions.png", "prior_samples.png"):
    with Image.open(os.path.join(folder, name)) as picture:
      pixels = np.asarray(picture.convert("L"))
    assert pixels.shape[0] > 200 and pixels.std() > 10  # a real picture, not a blank page


def test_worse_candidate_is_compared_with_the_blessed_model_and_not_pushed(first_run):
  config, first, _ = first_run
  worse = PipelineConfig(data=config.data, output_dir=config.output_dir, epochs=1,
                         batch_size=32, learning_rate=1e-9, max_loss=1000)
  summary = local_runner.run(worse, show_progress=False)
  states = {c.component: c.state for c in summary.components}
  assert states["Transform"] == "CACHED" and states["Trainer"] == "COMPLETE"
  # The baseline is run 1's pushed model, evaluated again on the same split.
  np.testing.assert_allclose(summary.baseline_metrics[features.LOSS], first.metrics[features.LOSS],
                             rtol=1e-5)
  assert summary.metrics[features.LOSS] > first.metrics[features.LOSS] + 10
  assert summary.blessed is False
  assert any("latest blessed model" in reason for reason in summary.blessing_reasons)
  assert summary.pushed_dir is None
  assert os.listdir(config.serving_dir) == [os.path.basename(first.pushed_dir)]


def test_a_diverging_training_fails_the_run_and_nothing_is_pushed(first_run):
  config, first, _ = first_run
  diverging = PipelineConfig(data=config.data, output_dir=config.output_dir, epochs=1,
                             batch_size=32, learning_rate=1e12, max_loss=1e12)
  with pytest.raises(RuntimeError, match="training diverged: the loss became"):
    local_runner.run(diverging, show_progress=False)
  states = {c.component: c.state for c in summary_lib.summarize(config.metadata_path).components}
  assert states["Trainer"] == "FAILED"
  assert "Evaluator" not in states and "Pusher" not in states
  assert os.listdir(config.serving_dir) == [os.path.basename(first.pushed_dir)]


def test_anomalies_stop_the_run_before_transform(first_run, tmp_path):
  config, first, _ = first_run
  # A curated schema that requires a label: this unlabeled data violates it.
  schema_uri = first.component("SchemaGen").outputs["schema"][0]
  schema_text = open(os.path.join(schema_uri, "schema.pbtxt")).read()
  schema_text += textwrap.dedent("""
      feature {
        name: "label"
        type: INT
        presence { min_fraction: 1.0 min_count: 1 }
        shape { dim { size: 1 } }
      }
      """)
  schema = tmp_path / "schema.pbtxt"
  schema.write_text(schema_text)
  strict = PipelineConfig(data=config.data, output_dir=str(tmp_path / "out"),
                          schema=str(schema))
  with pytest.raises(DataAnomaliesError, match="feature 'label'"):
    local_runner.run(strict, show_progress=False)
  summary = summary_lib.summarize(strict.metadata_path)
  states = {c.component: c.state for c in summary.components}
  assert states["AnomaliesGate"] == "FAILED"
  assert "Transform" not in states and "Trainer" not in states


def test_cli_reports_a_missing_data_folder_in_one_line(tmp_path):
  result = subprocess.run([CLI, "run", "--data", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith("vae-pipeline run: error: --data")
  assert "Traceback" not in result.stderr


# The model commands (generate, reconstruct, encode, score, interpolate) on run 1's model.

@pytest.fixture(scope="module", name="image_folder")
def fixture_image_folder(tmp_path_factory, digits):
  folder = tmp_path_factory.mktemp("pngs")
  for i, pixels in enumerate(digits[0][:12]):
    Image.fromarray(pixels.reshape(28, 28)).save(folder / f"digit{i:02d}.png")
  return folder


def cli(*args, cwd):
  result = subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=300,
                          cwd=cwd)
  return result


def ok(result):
  assert result.returncode == 0, result.stderr[-2000:]
  return result


def test_generate_writes_a_repeatable_grid(first_run, tmp_path):
  config, summary, _ = first_run
  model = ["--output-dir", config.output_dir]  # the latest pushed model, found by default
  ok(cli("generate", "--count", 12, "--seed", 5, "--out", "a.png", *model, cwd=tmp_path))
  ok(cli("generate", "--count", 12, "--seed", 5, "--out", "b.png", "--model",
         summary.pushed_dir, cwd=tmp_path))
  a, b = (np.asarray(Image.open(tmp_path / name)) for name in ("a.png", "b.png"))
  np.testing.assert_array_equal(a, b)
  assert a.std() > 5  # a picture, not a blank page


def test_reconstruct_encode_score_and_interpolate(first_run, image_folder, tmp_path):
  _, summary, _ = first_run
  model = ["--model", summary.pushed_dir]
  ok(cli("reconstruct", image_folder, "--out", "r.png", *model, cwd=tmp_path))
  with Image.open(tmp_path / "r.png") as picture:
    assert picture.height > picture.width / 10 * 2 * 0.9  # two rows per ten images at least
  ok(cli("encode", image_folder, "--out", "e.csv", *model, cwd=tmp_path))
  rows = list(csv.reader(open(tmp_path / "e.csv")))
  assert rows[0] == ["image", "z_mean_0", "z_mean_1", "z_log_var_0", "z_log_var_1"]
  assert len(rows) == 13
  ok(cli("score", image_folder, "--out", "s.csv", *model, cwd=tmp_path))
  rows = list(csv.DictReader(open(tmp_path / "s.csv")))
  scores = [float(r["score"]) for r in rows]
  assert len(rows) == 12 and scores == sorted(scores, reverse=True)
  assert {os.path.basename(r["image"]) for r in rows} == set(os.listdir(image_folder))
  ok(cli("interpolate", image_folder / "digit00.png", image_folder / "digit01.png",
         "--steps", 6, "--out", "i.png", *model, cwd=tmp_path))
  with Image.open(tmp_path / "i.png") as strip:
    assert strip.width > 7 * strip.height  # 2 originals + 6 decoded, side by side


def test_user_mistakes_are_one_line_errors(first_run, image_folder, tmp_path):
  _, summary, _ = first_run
  rgb = tmp_path / "rgb"
  rgb.mkdir()
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(rgb / "a.png")
  (tmp_path / "empty").mkdir()
  raw_sized = tmp_path / "raw-sized"  # 28 x 28 x 1 bytes of text: never read as raw pixels
  raw_sized.mkdir()
  (raw_sized / "text.png").write_bytes(b"x" * 784)
  with_nan = np.full((2, 28, 28), 100.0)
  with_nan[1, 3, 3] = np.nan
  np.savez(tmp_path / "nan.npz", images=with_nan)
  # A SavedModel with a decoder but no `generate` signature, like one an older version pushed.
  @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name=features.LATENT_INPUT)])
  def decode(z):
    return {features.IMAGES: tf.zeros([tf.shape(z)[0], 28, 28, 1])}
  tf.saved_model.save(tf.Module(), str(tmp_path / "older"),
                      signatures={features.DECODE_SIGNATURE: decode})
  cases = [
      (["score", tmp_path / "nope", "--model", summary.pushed_dir], "no such file or folder"),
      (["score", image_folder, "--model", tmp_path], "not a SavedModel folder"),
      (["score", rgb, "--model", summary.pushed_dir], "pass --size-policy resize or pad"),
      (["encode", tmp_path / "empty", "--model", summary.pushed_dir], "empty folder"),
      (["score", raw_sized, "--model", summary.pushed_dir], "text.png (not an image"),
      (["score", tmp_path / "nan.npz", "--model", summary.pushed_dir],
       "nan.npz:images[1] (1 NaN or infinite values)"),
      (["generate", "--output-dir", tmp_path / "no-runs"], "no pushed model"),
      (["generate", "--model", tmp_path / "older"], "has no 'generate' signature (it has decode)"),
      (["encode", image_folder, "--model", tmp_path / "older"], "has no 'encode' signature"),
  ]
  for args, message in cases:
    result = cli(*args, cwd=tmp_path)
    assert result.returncode == 2, (args, result.stderr[-2000:])
    # One line and nothing else: no traceback, and none of the C++ errors TensorFlow logs as it
    # loads ("Unable to register cuDNN factory"), which the CLI hides unless --verbose.
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], (args, result.stderr[-2000:])
  # Every command takes the --verbose that an unexpected failure's message asks for.
  verbose = cli("generate", "--model", tmp_path / "older", "--verbose", cwd=tmp_path)
  assert verbose.returncode != 0 and "Traceback" in verbose.stderr, verbose.stderr[-2000:]


def test_runs_lists_every_run_with_its_outcome(first_run, tmp_path):
  # By now this store holds run 1 (blessed, pushed), the worse candidate (not blessed) and the
  # diverging one (Trainer failed).
  config, first, _ = first_run
  result = cli("runs", "--output-dir", config.output_dir, cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.strip().splitlines()
  assert lines[0].split()[:3] == ["run", "span", "inputs"]
  assert len(lines) == 1 + 3
  assert first.run_id[:26] in lines[1] and " yes " in lines[1] and first.pushed_dir in lines[1]
  assert " no " in lines[2] and lines[2].rstrip().endswith("-")
  assert "(failed: Trainer)" in lines[3]
  missing = cli("runs", "--output-dir", tmp_path / "nothing", cwd=tmp_path)
  assert missing.returncode == 2 and "no runs recorded" in missing.stderr


def test_latent_plot_colours_by_label_and_draws_the_2d_manifold(first_run, tmp_path):
  from vae_pipeline import data as bundled  # pylint: disable=import-outside-toplevel
  _, summary, _ = first_run
  result = cli("latent-plot", bundled.bundled_dir(), "--out", "latent.png", "--model",
               summary.pushed_dir, cwd=tmp_path)
  ok(result)
  for name in ("latent.png", "latent_manifold.png"):  # run 1's model has a 2-D latent space
    with Image.open(tmp_path / name) as picture:
      pixels = np.asarray(picture.convert("RGB")).astype(np.float32)
    assert pixels.shape[0] > 300 and pixels.std() > 10
  with Image.open(tmp_path / "latent.png") as picture:  # tab10 colours: many distinct hues
    colours = {tuple(c) for c in np.asarray(picture.convert("RGB")).reshape(-1, 3)[::7]}
  assert len(colours) > 50
