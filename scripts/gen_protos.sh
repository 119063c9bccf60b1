#!/usr/bin/env bash
# Regenerate the checked-in Python code for every .proto under protos/ (one copy, one script).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-protos}
mapfile -t files < <(cd protos && find scalequest -name '*.proto' | sort)
"$PY" -m grpc_tools.protoc -I protos --python_out="$OUT" --pyi_out="$OUT" --grpc_python_out="$OUT" "${files[@]}"
# Package markers so the generated modules import as `scalequest.<svc>.v1`.
find "$OUT/scalequest" -type d -exec sh -c 'touch "$0/__init__.py"' {} \;
