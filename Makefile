# The two commands a user needs: `make run` and `make test`. Both create or refresh .venv first.
#   make run ARGS="--epochs 10"        options for `vae-pipeline run`
#   make test PYTEST_ARGS="-k unit"    options for pytest
VENV := .venv
BIN := $(VENV)/bin
# uv resolves and installs this ~3 GB stack in seconds; pip takes minutes. Installed if missing.
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
ARGS ?=
PYTEST_ARGS ?=

.PHONY: run test bench bench-quality bench-train-speed bench-serve-speed bench-anomaly lock venv clean

run: venv
	$(BIN)/vae-pipeline run $(ARGS)

test: venv
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

bench: venv
	$(BIN)/python benchmarks/pipeline_run.py $(ARGS)

bench-quality: venv
	$(BIN)/python benchmarks/quality.py $(ARGS)

bench-train-speed: venv
	$(BIN)/python benchmarks/train_speed.py --ceiling $(ARGS)

bench-serve-speed: venv
	$(BIN)/python benchmarks/serve_speed.py $(ARGS)

bench-anomaly: venv
	$(BIN)/python benchmarks/anomaly.py $(ARGS)

venv: $(VENV)/.installed

# --python on every uv call: uv started as `python3 -m uv` (how it runs where it was only
# pip-installed) resolves for the interpreter that runs it, not for VIRTUAL_ENV, and the lock is
# for Python 3.10 only.
# compileall: uv, unlike pip, installs the ~23,000 modules without their bytecode, and where Python
# may not write it (PYTHONDONTWRITEBYTECODE=1, as on CI and in many images) every command would
# compile TensorFlow, Beam and TFX again, tripling its import time. (uv's --compile-bytecode would
# skip a venv that is already installed.) What fails to compile (templates, Python 2 leftovers) is
# never imported: not an error. The Makefile is a prerequisite so that a venv built by an older
# recipe is brought up to date.
$(VENV)/.installed: requirements.lock setup.py Makefile
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	@test -x $(BIN)/python || $(UV) venv --quiet --python "$$(UV='$(UV)' scripts/python310.sh)" $(VENV)
	$(UV) pip install --quiet --python $(BIN)/python -r requirements.lock
	$(UV) pip install --quiet --python $(BIN)/python --no-deps -e .
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib >/dev/null || true
	@touch $@

# Re-resolves the pinned set from requirements.in (needs the package index).
lock:
	$(UV) pip compile requirements.in --python-version 3.10 --python-platform x86_64-manylinux_2_28 \
	  --custom-compile-command "make lock" --quiet -o requirements.lock

clean:
	rm -rf $(VENV) outputs
