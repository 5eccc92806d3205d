"""The report page (`index.html`: one static file, inline CSS, no script, no network) and the model
card (`model_card.md`), rendered from the Jinja2 templates in templates/:

    report.html.j2      the page; includes model_card.html.j2 as its last section
    model_card.html.j2  the model card, as a section of the page
    model_card.md.j2    the model card, as Markdown
    card_text.j2        the card's fixed words (intended use, known limits): one list each, shared
                        by both forms of the card

Python computes what the templates show (rows of numbers and words: `model_card`, `blessing_rules`,
...); the templates format and escape it.

Escaping, one Jinja2 environment per output language:
- HTML: autoescape on. Every `{{ ... }}` is HTML-escaped (markupsafe) unless it is Markup; nothing
  in these templates marks text safe, so names, paths and reasons always arrive escaped.
- Markdown: a separate environment, without HTML autoescape (it would write `&lt;` into a .md
  file). Its `finalize` escapes every `{{ ... }}` for Markdown instead (`markdown_escape`): line
  breaks become spaces and the characters that start Markdown syntax, raw HTML or a table cell
  (`\\ ` * _ [ ] < > | & ~ #`) get a backslash, so a value cannot break a table, open a tag or turn
  into a link. A value that is already Markdown is a `MarkdownText`, made by the `code` filter
  (a code span) only.
"""
import dataclasses
import re
import statistics
from typing import Dict, List, Optional

import jinja2

from vae_pipeline.models import features

TEMPLATE_PACKAGE = "vae_pipeline.components.run_report"  # templates/ is package data (setup.py)
PAGE_TEMPLATE = "report.html.j2"
CARD_TEMPLATE = "model_card.md.j2"

# What each evaluation number is (docs/evaluation.md), shown beside the table.
METRIC_MEANINGS = {
    features.RECONSTRUCTION_LOSS: "binary cross-entropy of the reconstruction from z = mean, "
                                  "summed over pixels",
    features.KL_LOSS: "KL(q(z|x) || N(0, I)), summed over latent dimensions",
    features.LOSS: "reconstruction_loss + KL: what the blessing compares (deterministic)",
    features.NEG_ELBO: "Monte-Carlo negative ELBO, 64 sampled z per image",
    features.NLL_IW: "importance-weighted bound on -log p(x), 64 samples (<= neg_elbo)",
}


# ----------------------------------------------------------------------------- formatting


def number(value, digits=2) -> str:
  """1,234.57; `-` for none or NaN."""
  return "-" if value is None or value != value else f"{value:,.{digits}f}"


def count(value) -> str:
  return "-" if value is None else f"{value:,}"


def percent(fraction) -> str:
  """0.0123 -> 1.23%; `-` for none."""
  return "-" if fraction is None or fraction != fraction else f"{100 * fraction:.3g}%"


def shape(dims) -> str:
  return "x".join(str(d) for d in dims)


def quantile(value) -> str:
  """0.99 -> 0.99 (the 99th percentile)."""
  if value is None:
    return "-"
  hundredths = f"{100 * value:g}"
  suffix = ("th" if not hundredths.isdigit() or 10 <= int(hundredths) % 100 <= 20 else
            {1: "st", 2: "nd", 3: "rd"}.get(int(hundredths) % 10, "th"))
  return f"{value:g} (the {hundredths}{suffix} percentile)"


class MarkdownText(str):
  """Text that is Markdown already: the Markdown environment's finalize leaves it as it is."""


_MARKDOWN_SPECIAL = re.compile(
    r"[\\`*\[\]<>|&~#]"
    # `_` only at a word's edge: inside a word (neg_elbo) it starts no emphasis.
    r"|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")
_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")


def markdown_escape(value) -> str:
  """Any value as Markdown text that reads as itself: on one line, no syntax (see the module)."""
  if isinstance(value, MarkdownText):
    return value
  text = _LINE_BREAKS.sub(" ", "" if value is None else str(value))
  return MarkdownText(_MARKDOWN_SPECIAL.sub(lambda m: "\\" + m.group(0), text))


def markdown_code(value, in_table=False) -> MarkdownText:
  """A code span showing `value` exactly (a path, a metric's name); `in_table`: inside a table
  row, where `|` must be `\\|` even in a code span."""
  text = _LINE_BREAKS.sub(" ", str(value))
  fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
  pad = " " if text[:1] in ("`", " ") or text[-1:] in ("`", " ") else ""
  if in_table:
    text = text.replace("|", "\\|")
  return MarkdownText(f"{fence}{pad}{text}{pad}{fence}")


def _environment(markdown: bool) -> jinja2.Environment:
  options = (dict(autoescape=False, finalize=markdown_escape) if markdown else
             dict(autoescape=True))
  environment = jinja2.Environment(
      loader=jinja2.PackageLoader(TEMPLATE_PACKAGE, "templates"), undefined=jinja2.StrictUndefined,
      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, **options)
  environment.filters.update(number=number, count=count, percent=percent, shape=shape,
                             quantile=quantile)
  if markdown:
    environment.filters.update(code=markdown_code)
  return environment


HTML = _environment(markdown=False)
MARKDOWN = _environment(markdown=True)


# ----------------------------------------------------------------------------- what is shown


@dataclasses.dataclass
class Rule:
  """One row of the blessing table."""
  rule: str
  candidate: Optional[float]
  compared_with: Optional[float]
  change: str  # words
  result: str  # pass, FAIL or -


def blessing_rules(facts) -> List[Rule]:
  """The Evaluator's two thresholds with the numbers they compared."""
  loss = facts.metrics.get(features.LOSS)
  base = facts.baseline_metrics.get(features.LOSS)
  rules = [Rule("loss is at most the bound", loss, facts.loss_upper_bound, "-",
                "pass" if loss is not None and loss <= facts.loss_upper_bound else "FAIL")]
  if base is None:
    rules.append(Rule("no worse than the latest blessed model", loss, None,
                      "no other blessed model: not checked", "-"))
  else:
    change = loss - base
    rules.append(Rule("no worse than the latest blessed model", loss, base,
                      f"{change:+.2f} (allowed {facts.max_loss_increase:+.2f})",
                      "pass" if change <= facts.max_loss_increase else "FAIL"))
  return rules


@dataclasses.dataclass
class Metric:
  name: str
  candidate: Optional[float]
  baseline: Optional[float]
  meaning: str


def metric_rows(facts) -> List[Metric]:
  return [Metric(name, facts.metrics.get(name), facts.baseline_metrics.get(name),
                 METRIC_MEANINGS[name]) for name in features.LOSS_OUTPUTS]


@dataclasses.dataclass
class Label:
  """A label value: its class name (when known) and the candidate's numbers on its eval images."""
  value: str
  name: Optional[str]
  images: Optional[float]
  metrics: Dict[str, float]  # features.LOSS_OUTPUTS

  @property
  def title(self) -> str:
    return f"{self.value} ({self.name})" if self.name is not None else self.value


def label_rows(facts, every_name=False) -> List[Label]:
  """The labels the evaluation broke down by; `every_name`: every class name too, evaluated or
  not (an eval split may lack a class)."""
  names = facts.label_names or []
  values = list(facts.label_metrics)
  if every_name:
    values = [str(i) for i in range(len(names))] + [v for v in values if not (
        v.isdigit() and int(v) < len(names))]
  rows = []
  for value in values:
    numbers = facts.label_metrics.get(value, {})
    name = names[int(value)] if value.isdigit() and int(value) < len(names) else None
    rows.append(Label(value, name, numbers.get("example_count"),
                      {m: numbers.get(m) for m in features.LOSS_OUTPUTS}))
  return rows


def training_rows(facts) -> List[tuple]:
  """(what, value as text) for the training table."""
  history, config = facts.history, facts.history.get("config", {})
  seconds = history.get("epoch_seconds") or []
  steady = statistics.median(seconds[1:]) if len(seconds) > 1 else None
  images = history.get("train_images")
  return [
      ("epochs", str(len(history.get("loss", [])))),
      ("training seconds (steps only)", number(sum(seconds), 1)),
      ("images per second, steady", number(images / steady if images and steady else None, 0)),
      ("training workers (tf.distribute, local processes)",
       str(config.get("train_workers", history.get("train_processes", 1)))),
      ("final training loss", number((history.get("loss") or [None])[-1])),
      ("final validation loss", number((history.get("val_loss") or [None])[-1])),
  ]


@dataclasses.dataclass
class ModelCard:
  """What the model card states beyond the facts themselves (both forms of the card)."""
  facts: object  # executor.Facts
  model_path: str  # the pushed model when pushed, else the candidate's SavedModel
  train_examples: Optional[int]  # the images the Trainer trained on
  split_examples: dict  # this span's examples per split (StatisticsGen)
  eval_examples: Optional[int]  # the images the Evaluator evaluated on
  epochs: int
  metrics: List[Metric]
  rules: List[Rule]
  labels: List[Label]
  anomaly_recorded: bool  # any of the threshold's numbers

  @property
  def windowed(self) -> bool:
    """Trained on more (or other) images than this span's train split: a span window."""
    train = self.split_examples.get("train")
    return None not in (train, self.train_examples) and train != self.train_examples


def model_card(facts) -> ModelCard:
  splits = {split.name: split.examples for split in facts.splits}
  history = facts.history
  eval_count = facts.metrics.get("example_count")
  return ModelCard(
      facts=facts, model_path=facts.pushed_dir or facts.model_dir,
      train_examples=history.get("train_images", splits.get("train")), split_examples=splits,
      eval_examples=int(eval_count) if eval_count is not None else splits.get("eval"),
      epochs=len(history.get("loss", [])), metrics=metric_rows(facts),
      rules=blessing_rules(facts), labels=label_rows(facts, every_name=True),
      anomaly_recorded=any(value is not None for value in (
          facts.anomaly_threshold, facts.anomaly_quantile, facts.false_positive_rate)))


def _context(facts) -> dict:
  return dict(facts=facts, card=model_card(facts), loss_name=features.LOSS,
              loss_outputs=features.LOSS_OUTPUTS)


def render(facts) -> str:
  """The report page, HTML."""
  return HTML.get_template(PAGE_TEMPLATE).render(
      training=training_rows(facts), labels=label_rows(facts), **_context(facts))


def render_card(facts) -> str:
  """The model card, Markdown."""
  return MARKDOWN.get_template(CARD_TEMPLATE).render(**_context(facts))
