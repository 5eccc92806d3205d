"""The report page: one static HTML file (inline CSS, no script, no network) over the figures."""
import html
import statistics
from typing import Iterable

from vae_pipeline.models import features

# What each evaluation number is (docs/evaluation.md), shown beside the table.
METRIC_MEANINGS = {
    features.RECONSTRUCTION_LOSS: "binary cross-entropy of the reconstruction from z = mean, "
                                  "summed over pixels",
    features.KL_LOSS: "KL(q(z|x) || N(0, I)), summed over latent dimensions",
    features.LOSS: "reconstruction_loss + KL: what the blessing compares (deterministic)",
    features.NEG_ELBO: "Monte-Carlo negative ELBO, 64 sampled z per image",
    features.NLL_IW: "importance-weighted bound on -log p(x), 64 samples (<= neg_elbo)",
}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222;
       padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em;
       margin-top: 1.6em; }
.meta { color: #666; }
.verdict { padding: 0.8em 1em; border-radius: 6px; font-size: 1.1em; margin: 1em 0; }
.ok { background: #e6f4ea; border: 1px solid #34a853; }
.no { background: #fce8e6; border: 1px solid #d93025; }
table { border-collapse: collapse; margin: 0.6em 0; }
td, th { padding: 0.25em 0.8em; border-bottom: 1px solid #eee; text-align: right; }
td:first-child, th:first-child, td.text { text-align: left; }
th { text-align: right; }
th { background: #f6f6f6; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: 0.9em; }
img { max-width: 100%; border: 1px solid #eee; }
"""


def _e(value) -> str:
  return html.escape(str(value))


def _number(value, digits=2) -> str:
  return "-" if value is None or value != value else f"{value:,.{digits}f}"


def _table(header: Iterable[str], rows: Iterable[Iterable[str]], text_columns=()) -> str:
  """Cells are already HTML (escape text with _e); numbers align right, `text_columns` left."""
  head = "".join(f"<th>{h}</th>" for h in header)
  cell = lambda i, c: f'<td class="text">{c}</td>' if i in text_columns else f"<td>{c}</td>"
  body = "".join("<tr>" + "".join(cell(i, c) for i, c in enumerate(row)) + "</tr>"
                 for row in rows)
  return f"<table><tr>{head}</tr>{body}</table>"


def _figure(facts, name, caption) -> str:
  file = facts.figures.get(name)
  if not file:
    return ""
  return (f'<figure><img src="{_e(file)}" alt="{_e(caption)}">'
          f"<figcaption>{_e(caption)}</figcaption></figure>")


def verdict(facts) -> str:
  loss = facts.metrics.get(features.LOSS)
  if facts.blessed:
    text = f"Blessed: loss {_number(loss)} nats per image passes the rule"
    text += f" and was pushed to <code>{_e(facts.pushed_dir)}</code>." if facts.pushed_dir else \
        ", but no push was recorded."
    return f'<div class="verdict ok">{text}</div>'
  reasons = "".join(f"<li>{_e(r)}</li>" for r in facts.blessing_reasons)
  return (f'<div class="verdict no">Not blessed, not pushed: loss {_number(loss)} nats per image.'
          f"<ul>{reasons}</ul></div>")


def blessing_section(facts) -> str:
  loss = facts.metrics.get(features.LOSS)
  base = facts.baseline_metrics.get(features.LOSS)
  rows = [[
      "loss is at most the bound", _number(loss), _number(facts.loss_upper_bound), "-",
      _e("pass" if loss is not None and loss <= facts.loss_upper_bound else "FAIL")]]
  if base is None:
    rows.append(["no worse than the latest blessed model", _number(loss), "-",
                 _e("no other blessed model: not checked"), "-"])
  else:
    change = loss - base
    rows.append([
        "no worse than the latest blessed model", _number(loss), _number(base),
        f"{change:+.2f} (allowed {facts.max_loss_increase:+.2f})",
        _e("pass" if change <= facts.max_loss_increase else "FAIL")])
  return ("<h2>Blessing decision</h2>" + verdict(facts)
          + _table(["rule", "candidate loss", "compared with", "change", "result"], rows,
                   text_columns=(4,)))


def training_section(facts) -> str:
  history, config = facts.history, facts.history.get("config", {})
  seconds = history.get("epoch_seconds") or []
  steady = statistics.median(seconds[1:]) if len(seconds) > 1 else None
  images = history.get("train_images")
  rows = [
      ["epochs", _e(len(history.get("loss", [])))],
      ["training seconds (steps only)", _number(sum(seconds), 1)],
      ["images per second, steady", _number(images / steady if images and steady else None, 0)],
      ["training processes (one thread each when more than one)",
       _e(history.get("train_processes", 1))],
      ["final training loss", _number((history.get("loss") or [None])[-1])],
      ["final validation loss", _number((history.get("val_loss") or [None])[-1])],
  ] + [[_e(k.replace("_", " ")), _e(v)] for k, v in sorted(config.items())
       if k in ("latent_dim", "hidden_units", "batch_size", "learning_rate", "beta",
                "mixed_precision", "seed", "clip_norm")]
  return ("<h2>Training</h2>"
          + _figure(facts, "training_curves", "Loss per epoch; validation on the eval split at "
                    "a few epochs.")
          + _table(["", "value"], rows))


def evaluation_section(facts) -> str:
  rows = [[_e(name), _number(facts.metrics.get(name)), _number(facts.baseline_metrics.get(name)),
           _e(METRIC_MEANINGS[name])]
          for name in features.LOSS_OUTPUTS]
  count = facts.metrics.get("example_count")
  text = (f"<p>Mean nats per image over {_number(count, 0)} eval-split images (lower is better)."
          " The latest blessed model is evaluated on the same images.</p>")
  return ("<h2>Evaluation</h2>" + text
          + _table(["metric", "candidate", "latest blessed", "what it is"], rows,
                   text_columns=(3,)))


def label_section(facts) -> str:
  if not facts.label_metrics:
    return ""
  names = facts.label_names or []
  rows = []
  for label, values in facts.label_metrics.items():
    name = f"{label} ({names[int(label)]})" if int(label) < len(names) else label
    rows.append([_e(name), _number(values.get("example_count"), 0)] +
                [_number(values.get(m)) for m in features.LOSS_OUTPUTS])
  return ("<h2>Per label</h2>"
          + _figure(facts, "label_metrics", "Mean loss per label, candidate model.")
          + _table(["label", "images"] + list(features.LOSS_OUTPUTS), rows))


def pictures_section(facts) -> str:
  parts = [
      _figure(facts, "reconstructions", "Eval images (top) and their reconstructions from "
              "z = mean (bottom), with each one's reconstruction loss."),
      _figure(facts, "prior_samples", "Images decoded from z drawn from the prior N(0, I)."),
      _figure(facts, "latent", "Eval images encoded: z means, coloured by label where there "
              "is one (the first two principal components above 2 latent dimensions)."),
      _figure(facts, "manifold", "The decoded 2-D latent space: z on a grid over the prior's "
              "central 90%."),
  ]
  return "<h2>What the model learned</h2>" + "".join(parts)


def data_section(facts) -> str:
  lines = []
  if facts.inputs is not None:
    bad = facts.bad_inputs or 0
    skipped = (f"{bad:,} skipped as unreadable (listed in <code>{_e(facts.bad_inputs_file)}"
               "</code>)" if bad else "none skipped")
    lines.append(f"{facts.inputs:,} inputs read, {skipped}.")
  if facts.span is not None:
    lines.append(f"Data span {facts.span}.")
  shape = "x".join(str(d) for d in facts.image_shape)
  lines.append(f"Images {shape} (height x width x channels), latent dimension {facts.latent_dim}.")
  if facts.label_names:
    lines.append("Labels from class folders: " + _e(", ".join(
        f"{i}={name}" for i, name in enumerate(facts.label_names))) + ".")
  tables = "".join(
      f"<h3>Split {_e(split.name)}: {split.examples:,} examples</h3>"
      + _table(["feature", "type", "present", "values"],
               [[_e(f["name"]), _e(f["type"]), f"{100 * f['present']:.0f}%",
                 _e(f["summary"])] for f in split.features], text_columns=(1, 3))
      for split in facts.splits)
  return "<h2>Data</h2>" + "".join(f"<p>{line}</p>" for line in lines) + tables


def render(facts) -> str:
  sections = [blessing_section(facts), training_section(facts), evaluation_section(facts),
              label_section(facts), pictures_section(facts), data_section(facts)]
  return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>VAE run {_e(facts.run_id)}</title><style>{STYLE}</style></head>
<body>
<h1>VAE run report</h1>
<p class="meta">Run {_e(facts.run_id)} &middot; written {_e(facts.written)} &middot;
model <code>{_e(facts.model_dir)}</code></p>
{"".join(sections)}
</body></html>
"""
