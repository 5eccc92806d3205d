"""The table of `vae-pipeline run`'s options in docs/operations.md, written from the parser itself
(each setting's flag, default and help come from its PipelineConfig field), so the page cannot
drift from the code:

    .venv/bin/python -m vae_pipeline.cli.options_doc           # rewrites the table
    .venv/bin/python -m vae_pipeline.cli.options_doc --check   # exit 1 if the page is stale
"""
import argparse
import os
import sys

from vae_pipeline.cli import main as cli

START = "<!-- run options: written by `python -m vae_pipeline.cli.options_doc` -->"
END = "<!-- end of run options -->"


def run_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser()
  cli.add_run_parser(parser.add_subparsers(), cli.settings_options())
  return parser._subparsers._group_actions[0].choices["run"]  # pylint: disable=protected-access


def default_text(action) -> str:
  if action.default is None or action.default is argparse.SUPPRESS or action.default == [] or (
      isinstance(action.default, bool)):
    return "-"
  if action.dest == "data":
    return "the bundled digits"  # its absolute path differs per install
  return f"`{action.default}`" if isinstance(action.default, str) else str(action.default)


def table() -> str:
  rows = ["| option | default | what it does |", "|---|---|---|"]
  for action in run_parser()._actions:  # pylint: disable=protected-access
    if not action.option_strings or action.dest == "help":
      continue
    flag = action.option_strings[0] + (f" {action.metavar}" if action.metavar else "")
    meaning = (action.help or "").replace("%%", "%").replace("|", "\\|")
    rows.append(f"| `{flag}` | {default_text(action)} | {meaning} |")
  return "\n".join(rows)


def rewritten(page: str) -> str:
  before, _, rest = page.partition(START)
  _, _, after = rest.partition(END)
  return f"{before}{START}\n{table()}\n{END}{after}"


def main(argv=None):
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                      "operations.md")
  with open(path) as f:
    page = f.read()
  if START not in page or END not in page:
    sys.exit(f"{path}: no {START} ... {END} block")
  new = rewritten(page)
  if "--check" in (argv if argv is not None else sys.argv[1:]):
    if new != page:
      sys.exit(f"{path} is stale: run python -m vae_pipeline.cli.options_doc")
    return 0
  with open(path, "w") as f:
    f.write(new)
  return 0


if __name__ == "__main__":
  sys.exit(main())
