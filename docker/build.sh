#!/usr/bin/env bash
# Build (and optionally push) the predictor images and the traffic controller's. Run from anywhere; the build context is the
# repository root. Needs Docker with BuildKit (docker buildx); CI does not run this.
#
#   docker/build.sh [neuron|gpu|cpu|controller|playground|all]...        (default: all)
#
# Environment:
#   REGISTRY   image name prefix (default: hw-agnostic-inference, the names the manifests use;
#              e.g. 111122223333.dkr.ecr.us-west-2.amazonaws.com/hw-agnostic-inference)
#   TAG        image tag (default: the version in pyproject.toml)
#   PUSH=1     push after building; required for the multi-arch CPU image
#   DRY_RUN=1  print the docker commands instead of running them
#
# Images: $REGISTRY/predictor-neuron (linux/amd64), $REGISTRY/predictor-gpu (linux/amd64),
#         $REGISTRY/predictor-cpu (linux/amd64 + linux/arm64 when PUSH=1, else the host's),
#         $REGISTRY/controller (controller/Dockerfile; linux/amd64 + linux/arm64 likewise),
#         $REGISTRY/playground (docker/Dockerfile.playground; linux/amd64 + linux/arm64 likewise).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REGISTRY="${REGISTRY:-hw-agnostic-inference}"
TAG="${TAG:-$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -n 1)}"
PUSH="${PUSH:-0}"
DRY_RUN="${DRY_RUN:-0}"

run() {
  if [[ "$DRY_RUN" == "1" ]]; then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

build() {
  local flavour="$1" platforms="$2"
  local image="$REGISTRY/predictor-$flavour:$TAG"
  local dockerfile="$ROOT/docker/Dockerfile.$flavour"
  if [[ "$flavour" == "controller" ]]; then
    image="$REGISTRY/controller:$TAG"
    dockerfile="$ROOT/controller/Dockerfile"
  elif [[ "$flavour" == "playground" ]]; then
    image="$REGISTRY/playground:$TAG"
  fi
  local output=(--load)
  if [[ "$PUSH" == "1" ]]; then
    output=(--push)
  elif [[ "$platforms" == *,* ]]; then
    # A multi-platform image cannot be loaded into the local image store: build the host's.
    platforms=""
  fi
  local cmd=(docker buildx build --file "$dockerfile" --tag "$image")
  [[ -n "$platforms" ]] && cmd+=(--platform "$platforms")
  cmd+=("${output[@]}" "$ROOT")
  run "${cmd[@]}"
}

targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=(all)
for target in "${targets[@]}"; do
  case "$target" in
    neuron) build neuron linux/amd64 ;;
    gpu) build gpu linux/amd64 ;;
    cpu) build cpu linux/amd64,linux/arm64 ;;
    controller) build controller linux/amd64,linux/arm64 ;;
    playground) build playground linux/amd64,linux/arm64 ;;
    all)
      build neuron linux/amd64
      build gpu linux/amd64
      build cpu linux/amd64,linux/arm64
      build controller linux/amd64,linux/arm64
      build playground linux/amd64,linux/arm64
      ;;
    *)
      echo "usage: $0 [neuron|gpu|cpu|controller|playground|all]..." >&2
      exit 2
      ;;
  esac
done
