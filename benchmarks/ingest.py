"""Ingestion speed and memory: ImageExampleGen alone on folders of synthetic PNGs.

    .venv/bin/python benchmarks/ingest.py [--sizes 10000,35000,70000] [--rgb 10000]

Writes the folders once (under /tmp), then runs the real component (LocalDagRunner) in a fresh
process per case, in Beam's in-memory mode and in multi-processing mode (2 workers). Prints images/s
and the peak memory of the process (and its Beam workers): cost should grow linearly with the input.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MODES = {
    "in_memory": ["--direct_running_mode=in_memory", "--direct_num_workers=1"],
    "multi_processing": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
}


def make_folder(folder, count, shape):
  """`count` PNGs of random strokes; written once and reused."""
  from PIL import Image, ImageDraw
  done = os.path.join(folder, ".complete")
  if os.path.exists(done):
    return folder
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(0)
  height, width, channels = shape
  for i in range(count):
    image = Image.new("L" if channels == 1 else "RGB", (width, height))
    draw = ImageDraw.Draw(image)
    points = [tuple(p) for p in rng.integers(0, min(height, width), size=(4, 2))]
    colour = 255 if channels == 1 else tuple(int(c) for c in rng.integers(64, 256, 3))
    draw.line(points, fill=colour, width=max(2, width // 10))
    image.save(os.path.join(folder, f"{i:06d}.png"))
  open(done, "w").close()
  return folder


def child(data, output_dir, mode, shape):
  """Runs ExampleGen once; prints seconds and peak RSS as JSON."""
  sys.path.insert(0, os.path.dirname(HERE))
  import vae_pipeline  # noqa: F401
  from vae_pipeline import local_runner
  from vae_pipeline.config import PipelineConfig
  config = PipelineConfig(data=data, output_dir=output_dir, image_shape=shape,
                          beam_args=MODES[mode])
  started = time.perf_counter()
  run = local_runner.run_example_gen(config)
  seconds = time.perf_counter() - started
  peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
             resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
  print(json.dumps({"seconds": seconds, "peak_kib": peak,
                    "inputs": run.properties["examples"]["input_count"]}))


def measure(data, mode, shape, scratch):
  output_dir = os.path.join(scratch, f"out-{os.path.basename(data)}-{mode}")
  subprocess.run(["rm", "-rf", output_dir], check=True)
  result = subprocess.run([sys.executable, __file__, "--child", data, output_dir, mode,
                           "x".join(map(str, shape))], capture_output=True, text=True)
  if result.returncode:
    sys.exit(result.stderr[-3000:])
  return json.loads(result.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--sizes", default="10000,35000,70000")
  parser.add_argument("--rgb", type=int, default=10000)
  parser.add_argument("--modes", default="in_memory,multi_processing")
  parser.add_argument("--scratch", default="/tmp/vae-ingest-bench")
  parser.add_argument("--child", nargs=4)
  args = parser.parse_args()
  if args.child:
    data, output_dir, mode, shape = args.child
    return child(data, output_dir, mode, tuple(int(d) for d in shape.split("x")))
  cases = [(n, (28, 28, 1)) for n in map(int, args.sizes.split(","))]
  if args.rgb:
    cases.append((args.rgb, (64, 64, 3)))
  print("| images | shape | Beam mode | seconds | images/s | peak MiB |")
  print("|---:|---|---|---:|---:|---:|")
  for count, shape in cases:
    folder = make_folder(os.path.join(args.scratch, f"png-{count}-{'x'.join(map(str, shape))}"),
                         count, shape)
    for mode in args.modes.split(","):
      r = measure(folder, mode, shape, args.scratch)
      assert r["inputs"] == count, r
      print(f"| {count:,} | {'x'.join(map(str, shape))} | {mode} | {r['seconds']:.1f} | "
            f"{count / r['seconds']:,.0f} | {r['peak_kib'] / 1024:,.0f} |", flush=True)


if __name__ == "__main__":
  main()
