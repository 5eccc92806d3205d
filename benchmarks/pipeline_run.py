"""Times the default pipeline on the bundled data, as a user runs it (`vae-pipeline run`).

    make bench                     # or: .venv/bin/python benchmarks/pipeline_run.py [run options]

In a fresh output folder: a cold run (every component executes), a re-run and a second re-run
(both served from TFX's cache: the baseline is never the candidate itself). Then a run on 40
images for 1 epoch, whose component times are mostly fixed costs (Beam start-up, model loading,
tracing). Prints one table: per-component
wall time for each, start-up (imports), peak memory (the largest process, and all of the run's
processes together), Trainer warm-up and images/s, eval metrics.
"""
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import psutil  # installed with TFX
import tensorflow as tf

CLI = os.path.join(os.path.dirname(sys.executable), "vae-pipeline")
BUNDLED = os.path.join(os.path.dirname(__file__), os.pardir, "data", "mnist-5k",
                       "digits.tfrecord.gz")
TINY = 40


def tree_rss_mib(process):
  """Resident memory of a process and all its descendants (the Trainer's local workers)."""
  try:
    tree = [process] + process.children(recursive=True)
  except psutil.NoSuchProcess:
    return 0.0
  total = 0
  for member in tree:
    try:
      total += member.memory_info().rss
    except psutil.NoSuchProcess:
      pass
  return total / 2**20


def run_cli(output_dir, extra):
  started = time.perf_counter()
  process = subprocess.Popen([CLI, "run", "--output-dir", output_dir] + extra,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  peak = [0.0]

  def sample():  # every 0.2 s: all processes of the run together
    watched = psutil.Process(process.pid)
    while process.poll() is None:
      peak[0] = max(peak[0], tree_rss_mib(watched))
      time.sleep(0.2)

  sampler = threading.Thread(target=sample, daemon=True)
  sampler.start()
  stdout, stderr = process.communicate()
  wall = time.perf_counter() - started
  sampler.join()
  if process.returncode != 0:
    sys.exit(f"run failed:\n{stdout[-3000:]}\n{stderr[-3000:]}")
  run_dir = re.search(r"^Run report: (.+)$", stdout, re.M).group(1)
  startup = float(re.search(r"^Imports and set-up: ([\d.]+) s$", stdout, re.M).group(1))
  with open(os.path.join(run_dir, "summary.json")) as f:
    summary = json.load(f)
  summary.update(command_seconds=wall, startup_seconds=startup, peak_tree_mib=peak[0])
  return summary


def tiny_data(folder):
  records = [r.numpy() for r in tf.data.TFRecordDataset(BUNDLED, compression_type="GZIP")]
  with tf.io.TFRecordWriter(os.path.join(folder, "tiny.tfrecord.gz"), "GZIP") as writer:
    for record in records[::len(records) // TINY][:TINY]:
      writer.write(record)
  return folder


def trainer_history(summary):
  trainer = next(c for c in summary["components"] if c["component"] == "Trainer")
  with open(os.path.join(trainer["outputs"]["model_run"][0], "history.json")) as f:
    return json.load(f)


def main(extra):
  output_dir = tempfile.mkdtemp(prefix="vae-bench-")
  runs = {"cold run": run_cli(output_dir, extra)}
  peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
  runs["re-run"] = run_cli(output_dir, extra)
  runs["re-run again"] = run_cli(output_dir, extra)
  runs[f"{TINY} images, 1 epoch"] = run_cli(tempfile.mkdtemp(prefix="vae-bench-tiny-"), extra + [
      "--data", tiny_data(tempfile.mkdtemp(prefix="vae-bench-tiny-data-")), "--epochs", "1",
      "--max-loss", "1e9"])

  names = list(runs)
  rows = [["component"] + [f"{name} s" for name in names]]
  for component in [c["component"] for c in runs[names[0]]["components"]]:
    rows.append([component] + [
        f"{next(c['seconds'] for c in run['components'] if c['component'] == component):.1f}"
        for run in runs.values()])
  rows.append(["pipeline (LocalDagRunner)"] + [f"{r['wall_seconds']:.1f}" for r in runs.values()])
  rows.append(["imports and set-up"] + [f"{r['startup_seconds']:.1f}" for r in runs.values()])
  rows.append(["whole command"] + [f"{r['command_seconds']:.1f}" for r in runs.values()])
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  for i, row in enumerate(rows):
    print("| " + " | ".join(cell.ljust(w) if j == 0 else cell.rjust(w)
                            for j, (cell, w) in enumerate(zip(row, widths))) + " |")
    if i == 0:
      print("|" + "|".join("-" * (w + 2) for w in widths) + "|")

  cold = runs["cold run"]
  history = trainer_history(cold)
  epochs = history["epoch_seconds"]
  steady = statistics.median(epochs[1:]) if len(epochs) > 1 else float("nan")
  metrics = cold["metrics"]
  print()
  print(f"peak memory of the cold run: largest process {peak_mib:,.0f} MiB; all its processes "
        f"at once {cold['peak_tree_mib']:,.0f} MiB (sampled every 0.2 s)")
  print(f"Trainer: {history.get('train_workers', 1)} worker process(es), "
        f"{len(epochs)} epochs on {history['train_images']:,} images, "
        f"{sum(epochs):.1f} s of training steps; first epoch {epochs[0]:.1f} s "
        f"(warm-up {epochs[0] - steady:.1f} s); steady state "
        f"{history['train_images'] / steady:,.0f} images/s")
  print(f"eval split ({metrics['example_count']:.0f} images), nats per image: neg_elbo "
        f"{metrics['neg_elbo']:.1f}, nll_iw {metrics['nll_iw']:.1f}, loss {metrics['loss']:.1f} "
        f"(reconstruction {metrics['reconstruction_loss']:.1f} + KL {metrics['kl_loss']:.1f}); "
        f"blessed: {cold['blessed']}")


if __name__ == "__main__":
  main(sys.argv[1:])
