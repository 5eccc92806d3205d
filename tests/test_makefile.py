"""The Makefile's install step resolves for .venv's Python however uv was started.

uv started as `python3 -m uv` resolves for the interpreter that runs it (on many machines a
Python 3.11, for which the lock is unsatisfiable), not for VIRTUAL_ENV; so every uv call that
installs must name its target with --python. A dry run of the real command proves it resolves.
"""
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PYTHON = os.path.join(".venv", "bin", "python")


def _uv_as_fresh_machine_starts_it():
  """`python3 -m uv` where that works (a pip-installed uv), else the uv binary."""
  python3 = shutil.which("python3")
  if python3 and subprocess.run([python3, "-m", "uv", "--version"], capture_output=True).returncode == 0:
    return "python3 -m uv"
  if shutil.which("uv"):
    return "uv"
  pytest.fail("no uv to test with: neither `python3 -m uv` nor `uv` works (make venv installs it)")


def _install_lines(uv):
  """The commands `make` would run to install .venv, with uv as given (make -n: nothing runs)."""
  out = subprocess.run(["make", "-n", "-B", f"UV={uv}", ".venv/.installed"], cwd=ROOT,
                       capture_output=True, text=True, check=True).stdout
  return [line.strip() for line in out.splitlines() if line.strip().startswith(f"{uv} pip install")]


def test_every_uv_pip_install_names_the_venv_python():
  lines = _install_lines("python3 -m uv")
  assert len(lines) == 2, lines  # the lock, then the project itself
  for line in lines:
    assert f"--python {VENV_PYTHON}" in line, line


def test_the_lock_install_resolves_for_the_venv_when_uv_runs_as_a_module():
  if not os.path.exists(os.path.join(ROOT, VENV_PYTHON)):
    pytest.skip("no .venv (make test builds it)")
  uv = _uv_as_fresh_machine_starts_it()
  lock_line = next(line for line in _install_lines(uv) if "requirements.lock" in line)
  env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PYTHON", "CONDA_PREFIX")}
  run = subprocess.run(lock_line.replace("--quiet", "--verbose") + " --dry-run", shell=True,
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  # uv names the environment it works on: .venv's Python 3.10, not the interpreter running uv.
  target = f"Using Python {sys.version_info[0]}.{sys.version_info[1]}"
  assert re.search(rf"{target}\.\d+ environment at: \.venv\b", run.stderr), run.stderr[-3000:]
  assert sys.version_info[:2] == (3, 10)
