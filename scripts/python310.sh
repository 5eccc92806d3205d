#!/usr/bin/env bash
# Prints the path of a Python 3.10 interpreter (TFX 1.16 supports 3.9-3.10 only), trying in turn:
# one uv already knows, one installed by pyenv, python3.10 on PATH, and finally a uv-managed
# download (needs the internet; `uv python install 3.10`).
set -euo pipefail
uv=${UV:-uv}
if py=$($uv python find --no-python-downloads 3.10 2>/dev/null); then echo "$py"; exit 0; fi
if command -v pyenv >/dev/null 2>&1; then
  for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.10(\.|$)' | sort -V -r); do
    if py=$(PYENV_VERSION=$v pyenv which python3.10 2>/dev/null); then echo "$py"; exit 0; fi
  done
fi
if command -v python3.10 >/dev/null 2>&1 && python3.10 -c '' 2>/dev/null; then command -v python3.10; exit 0; fi
echo "no Python 3.10 found; installing one with uv (needs network access)" >&2
$uv python install 3.10 >&2
$uv python find 3.10
