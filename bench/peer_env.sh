#!/usr/bin/env bash
# The virtualenv of the peer that `python -m bench --parts peer` measures ours against: KServe's own
# huggingfaceserver 0.14.1 with kserve 0.14.1 (issue 18).
#   bash bench/peer_env.sh VENV_DIR KSERVE_SRC
# KSERVE_SRC: a kserve source tree at v0.14.1 (`git clone --branch v0.14.1 https://github.com/kserve/kserve`,
# or `git archive v0.14.1 python | tar -x` from a clone); huggingfaceserver is not on PyPI.
# Then: python -m bench --parts peer --peer_python VENV_DIR/bin/python
#
# Why 0.14.1: from kserve 0.15 on, `kserve.protocol.rest.openai.types` imports vLLM at import time and
# huggingfaceserver's encoder model depends on it; vLLM needs CUDA wheels and another torch. In
# 0.14.1 vLLM is optional (huggingfaceserver/vllm/utils.py: vllm_available()).
# The venv stays outside the repository (it is ~1.5 GB) and apart from ours: kserve 0.14.1 pins
# numpy ^1.26, protobuf ^4.25 and uvicorn ^0.30, which our kserve does not accept.
set -euo pipefail
if [ $# -ne 2 ]; then
  echo "usage: bash bench/peer_env.sh VENV_DIR KSERVE_SRC" >&2
  exit 2
fi
VENV=$1
HF_SRC=$2/python/huggingfaceserver
REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3.11}
if ! grep -q '^version = "0.14.1"' "$HF_SRC/pyproject.toml" 2>/dev/null; then
  echo "peer_env.sh: $HF_SRC/pyproject.toml is not huggingfaceserver 0.14.1 (check out kserve's tag v0.14.1)" >&2
  exit 2
fi

"$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/pip" install --quiet --disable-pip-version-check "$@"; }
# torch first and exactly ours (fairness: the same kernels and threads); the repository's constraints
# file pins it, as any other torch spec (huggingfaceserver 0.14.1 asks ~2.4.0) pulls GBs of CUDA wheels.
pip -c "$REPO/constraints.txt" torch==2.13.0
# kserve from PyPI without its storage extra, plus requests (kserve.storage imports it at the top, its
# cloud clients only when used): the extra pins huggingface-hub ^0.24, which transformers 5 refuses,
# and the benchmark serves a local --model_dir.
# transformers: the same as ours (huggingfaceserver 0.14.1 asks ~4.43.3, but its encoder path loads and
# serves the tiny BERT classifier with 5.24.0, and the same tokenizer and model code makes the
# comparison about the servers). accelerate: huggingfaceserver asks ~0.32 (only init_empty_weights is
# used); 1.15.0 is the one that resolves with transformers 5. fastapi: the same as ours.
pip -c "$REPO/constraints.txt" kserve==0.14.1 requests transformers==5.24.0 accelerate==1.15.0 fastapi==0.165.0
# --no-deps: its pins (torch ~2.4, transformers ~4.43, kserve from a path) are the ones overridden above.
pip --no-deps "$HF_SRC"
"$VENV/bin/python" - <<'EOF'
from importlib.metadata import version

import huggingfaceserver.__main__  # noqa: F401 - imports kserve, transformers, accelerate as the server does
import torch

assert torch.__version__.startswith("2.13.0"), torch.__version__
print("peer venv:", ", ".join(f"{name} {version(name)}" for name in ("kserve", "huggingfaceserver", "torch", "transformers")))
EOF
