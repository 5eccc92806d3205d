"""Times the default pipeline on the bundled data, as a user runs it (`vae-pipeline run`).

    make bench                     # or: .venv/bin/python benchmarks/pipeline_run.py [run options]

Runs twice in a fresh output folder: cold (every component executes) and again (everything is
served from TFX's cache). Prints one table: per-component wall time, total wall time, start-up,
peak memory, Trainer warm-up and steady-state images/s, eval loss.
"""
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

CLI = os.path.join(os.path.dirname(sys.executable), "vae-pipeline")


def run_cli(output_dir, extra):
  started = time.perf_counter()
  result = subprocess.run([CLI, "run", "--output-dir", output_dir] + extra,
                          capture_output=True, text=True)
  wall = time.perf_counter() - started
  if result.returncode != 0:
    sys.exit(f"run failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
  run_dir = re.search(r"^Run report: (.+)$", result.stdout, re.M).group(1)
  with open(os.path.join(run_dir, "summary.json")) as f:
    return wall, json.load(f)


def trainer_history(summary):
  trainer = next(c for c in summary["components"] if c["component"] == "Trainer")
  with open(os.path.join(trainer["outputs"]["model_run"][0], "history.json")) as f:
    return json.load(f)


def main(extra):
  output_dir = tempfile.mkdtemp(prefix="vae-bench-")
  cold_wall, cold = run_cli(output_dir, extra)
  peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
  cached_wall, cached = run_cli(output_dir, extra)
  history = trainer_history(cold)
  epochs = history["epoch_seconds"]
  steady = [history["train_images"] / s for s in epochs[1:]] or [float("nan")]

  rows = [("component", "cold run s", "cached run s")]
  cached_by_name = {c["component"]: c for c in cached["components"]}
  for c in cold["components"]:
    rows.append((c["component"], f"{c['seconds']:.1f}",
                 f"{cached_by_name[c['component']]['seconds']:.1f}"))
  rows += [
      ("pipeline (LocalDagRunner)", f"{cold['wall_seconds']:.1f}", f"{cached['wall_seconds']:.1f}"),
      ("whole command (imports, pictures)", f"{cold_wall:.1f}", f"{cached_wall:.1f}"),
  ]
  width = max(len(r[0]) for r in rows)
  print(f"| {rows[0][0]:<{width}} | {rows[0][1]:>10} | {rows[0][2]:>12} |")
  print(f"|{'-' * (width + 2)}|{'-' * 12}|{'-' * 14}|")
  for name, a, b in rows[1:]:
    print(f"| {name:<{width}} | {a:>10} | {b:>12} |")
  print()
  print(f"peak memory (largest process): {peak_mib:,.0f} MiB")
  print(f"Trainer: {len(epochs)} epochs on {history['train_images']} images; first epoch "
        f"{epochs[0]:.1f} s (warm-up); steady state {statistics.median(steady):,.0f} images/s")
  print(f"eval loss {cold['metrics']['loss']:.1f} nats/image (reconstruction "
        f"{cold['metrics']['reconstruction_loss']:.1f} + KL {cold['metrics']['kl_loss']:.1f}); "
        f"blessed: {cold['blessed']}")


if __name__ == "__main__":
  main(sys.argv[1:])
