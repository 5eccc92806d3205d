"""Annotated PNG figures of a run and its model: training curves, reconstructions with their
losses, prior samples, the latent space, per-label losses. The run report (components/run_report)
is made of these; `vae-pipeline latent-plot` draws its scatter with `latent_figure`."""
import os

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from vae_pipeline.models import features  # noqa: E402


def _show(axis, image):
  image = np.clip(image, 0.0, 1.0)
  if image.shape[-1] == 1:
    axis.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
  else:
    axis.imshow(image)
  axis.set_xticks([])
  axis.set_yticks([])


def reconstructions_figure(model, serialized_examples, path):
  """Top row: the inputs (as the model sees them); bottom row: reconstructions with their loss."""
  outputs = model.signatures[features.SERVING_SIGNATURE](
      examples=tf.constant(serialized_examples))
  parsed = tf.io.parse_example(serialized_examples,
                               {features.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string)})
  channels = outputs[features.RECONSTRUCTION].shape[-1]
  originals = [tf.io.decode_png(png, channels=channels).numpy() / 255.0
               for png in parsed[features.IMAGE_KEY].numpy()]
  count = len(originals)
  figure, axes = plt.subplots(2, count, figsize=(1.2 * count, 2.9), squeeze=False)
  for i in range(count):
    _show(axes[0, i], originals[i])
    _show(axes[1, i], outputs[features.RECONSTRUCTION][i].numpy())
    axes[1, i].set_xlabel(f"{outputs[features.RECONSTRUCTION_LOSS][i].numpy():.0f}", fontsize=8)
  axes[0, 0].set_ylabel("input", fontsize=9)
  axes[1, 0].set_ylabel("reconstruction", fontsize=9)
  figure.suptitle("Originals vs reconstructions (z = mean; BCE in nats under each)", fontsize=10)
  figure.tight_layout()
  return _save(figure, path)


def prior_samples_figure(model, path, rows=8, columns=8, seed=0):
  """Images decoded from z ~ N(0, I): what the model generates."""
  decode = model.signatures[features.DECODE_SIGNATURE]
  latent_dim = decode.structured_input_signature[1][features.LATENT_INPUT].shape[-1]
  z = np.random.default_rng(seed).standard_normal((rows * columns, latent_dim)).astype(np.float32)
  images = decode(z=tf.constant(z))[features.IMAGES].numpy()
  figure, axes = plt.subplots(rows, columns, figsize=(columns, rows + 0.4), squeeze=False)
  for axis, image in zip(axes.flat, images):
    _show(axis, image)
  figure.suptitle(f"Samples decoded from the prior, z ~ N(0, I) in {latent_dim} dims", fontsize=10)
  figure.tight_layout()
  return _save(figure, path)


def _save(figure, path):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  figure.savefig(path, dpi=100, bbox_inches="tight")
  plt.close(figure)
  return path


def training_curves_figure(history, path):
  """The loss per epoch (training, and validation where it ran), and its two terms."""
  epochs = np.arange(1, len(history["loss"]) + 1)
  validations = len(history.get("val_loss") or [])
  # Histories written before `val_epochs` existed: validations were evenly spread.
  val_epochs = history.get("val_epochs") or [
      round((i + 1) * len(epochs) / validations) for i in range(validations)]
  figure, (total, terms) = plt.subplots(1, 2, figsize=(10, 3.6))
  total.plot(epochs, history["loss"], label="training (batch mean)")
  if history.get("val_loss"):
    total.plot(val_epochs, history["val_loss"], "o--", label="validation (eval split)")
  total.set_title("loss = reconstruction + KL (nats per image)", fontsize=10)
  for name, colour in ((features.RECONSTRUCTION_LOSS, "tab:blue"), (features.KL_LOSS, "tab:red")):
    terms.plot(epochs, history[name], color=colour, label=f"{name} (training)")
    if history.get(f"val_{name}"):
      terms.plot(val_epochs, history[f"val_{name}"], "o--", color=colour,
                 label=f"{name} (validation)")
  terms.set_title("the two terms", fontsize=10)
  for axis in (total, terms):
    axis.set_xlabel("epoch")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
  # The first epochs' losses dwarf the rest: show the interesting range.
  late = np.asarray(history["loss"])[len(epochs) // 5:]
  if len(late):
    total.set_ylim(top=float(np.max(late)) * 1.15, bottom=float(np.min(late)) * 0.95)
  figure.tight_layout()
  return _save(figure, path)


def latent_figure(means, labels, path, label_names=None):
  """A scatter of z means coloured by label (None: no label); the first two principal
  components when the latent space has more than 2 dimensions."""
  latent_dim = means.shape[1]
  if latent_dim > 2:
    centred = means - means.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    points, axes = centred @ components[:2].T, ("principal component 1", "principal component 2")
  else:
    points = means if latent_dim == 2 else np.c_[means, np.zeros(len(means))]
    axes = ("z[0]", "z[1]")
  figure, axis = plt.subplots(figsize=(7, 6))
  if any(label is not None for label in labels):
    colours = np.array([-1 if label is None else label for label in labels])
    scatter = axis.scatter(points[:, 0], points[:, 1], c=colours, cmap="tab10", s=6)
    bar = figure.colorbar(scatter, ax=axis, label="label")
    if label_names:
      bar.set_ticks(range(len(label_names)))
      bar.set_ticklabels(label_names)
  else:
    axis.scatter(points[:, 0], points[:, 1], s=6)
  axis.set_xlabel(axes[0])
  axis.set_ylabel(axes[1])
  axis.set_title(f"{len(points):,} images encoded (z mean), latent dim {latent_dim}")
  return _save(figure, path)


def label_metrics_figure(label_metrics, path, label_names=None):
  """Mean loss per label with its two terms stacked: which classes the model finds hard."""
  labels = list(label_metrics)
  names = [label_names[int(l)] if label_names and int(l) < len(label_names) else l
           for l in labels]
  reconstruction = [label_metrics[l].get(features.RECONSTRUCTION_LOSS, np.nan) for l in labels]
  kl = [label_metrics[l].get(features.KL_LOSS, np.nan) for l in labels]
  figure, axis = plt.subplots(figsize=(max(4, 0.7 * len(labels) + 2), 3.4))
  axis.bar(names, reconstruction, label=features.RECONSTRUCTION_LOSS, color="tab:blue")
  axis.bar(names, kl, bottom=reconstruction, label=features.KL_LOSS, color="tab:red")
  axis.set_ylabel("nats per image")
  axis.set_xlabel("label")
  axis.set_title("Mean loss per label on the eval split", fontsize=10)
  axis.legend(fontsize=8)
  figure.tight_layout()
  return _save(figure, path)


def anomaly_figure(scores, threshold, quantile, serialized_examples, path, most=8):
  """Left: the histogram of eval images' anomaly scores with the threshold; right: the `most`
  eval images with the highest scores, each with its score."""
  scores = np.asarray(scores)
  order = np.argsort(-scores, kind="stable")[:most]
  parsed = tf.io.parse_example([serialized_examples[i] for i in order],
                               {features.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string)})
  images = [tf.io.decode_png(png).numpy() / 255.0 for png in parsed[features.IMAGE_KEY].numpy()]
  figure = plt.figure(figsize=(4.5 + 1.1 * len(images), 2.8))
  grid = figure.add_gridspec(1, 2, width_ratios=[4.5, 1.1 * max(1, len(images))])
  histogram = figure.add_subplot(grid[0])
  histogram.hist(scores, bins=40, color="#4a78b5")
  if threshold is not None:
    histogram.axvline(threshold, color="#c0392b", linestyle="--",
                      label=f"threshold ({quantile:g} quantile)")
    histogram.legend(fontsize=8)
  histogram.set_xlabel("anomaly score (higher: more unusual)", fontsize=9)
  histogram.set_ylabel("eval images", fontsize=9)
  cells = grid[1].subgridspec(1, max(1, len(images)))
  for i, (image, index) in enumerate(zip(images, order)):
    axis = figure.add_subplot(cells[0, i])
    _show(axis, image)
    axis.set_xlabel(f"{scores[index]:.1f}", fontsize=8)
  figure.suptitle(f"Anomaly scores of {len(scores)} eval images, and the {len(images)} most "
                  "unusual", fontsize=10)
  figure.tight_layout()
  return _save(figure, path)
