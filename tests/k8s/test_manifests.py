"""Every manifest in the repository parses, builds, and validates against its schema.

Generic on purpose: kustomizations and YAML files are discovered, so new ones (e.g. the
controller's controller/deploy/) are covered without touching these tests.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8slib import (
    CRDS_DIR,
    REPO_ROOT,
    CrdVersion,
    ObjectSet,
    find_kustomizations,
    find_yaml_files,
    kustomize_build,
    object_id,
    validate_object,
    validate_objects,
)

YAML_FILES = find_yaml_files(REPO_ROOT)
KUSTOMIZATIONS = find_kustomizations(REPO_ROOT)
BUILDABLE = [k for k in KUSTOMIZATIONS if not k.is_component]
COMPONENTS = [k for k in KUSTOMIZATIONS if k.is_component]


def _rel(path: Path) -> str:
    return path.relative_to(REPO_ROOT).as_posix()


def _report(errors: dict[str, list[str]]) -> str:
    return "\n".join(f"{obj}:\n  " + "\n  ".join(messages) for obj, messages in errors.items())


def test_vendored_crds_directory_is_present() -> None:
    assert CRDS_DIR.is_dir(), f"{CRDS_DIR} is missing: custom resources are validated against the vendored upstream CRDs"
    kinds = {path.name for path in CRDS_DIR.glob("*.yaml")}
    for expected in (
        "serving.kserve.io_inferenceservices.yaml",
        "serving.kserve.io_clusterservingruntimes.yaml",
        "serving.kserve.io_inferencegraphs.yaml",
        "karpenter.sh_nodepools.yaml",
        "karpenter.k8s.aws_ec2nodeclasses.yaml",
    ):
        assert expected in kinds, f"{expected} missing from {CRDS_DIR}"


def test_the_repository_has_the_packaging_kustomizations() -> None:
    names = {k.name for k in KUSTOMIZATIONS}
    for expected in ("servingruntimes", "inferenceservices", "nodepools", "deploy", "deploy/neuron-compile"):
        assert expected in names


@pytest.mark.parametrize("path", YAML_FILES, ids=_rel)
def test_every_yaml_file_parses(path: Path) -> None:
    list(yaml.safe_load_all(path.read_text()))


@pytest.mark.parametrize("kustomization", BUILDABLE, ids=lambda k: k.name)
def test_every_kustomization_builds(kustomization, builds: dict[str, Any]) -> None:
    result = builds[kustomization.name]
    if isinstance(result, RuntimeError):
        pytest.fail(str(result), pytrace=False)
    assert result.objects, f"{kustomization.name} builds to nothing"


@pytest.mark.parametrize("kustomization", BUILDABLE, ids=lambda k: k.name)
def test_every_built_object_validates_against_its_schema(
    kustomization, builds: dict[str, Any], crds: dict[tuple[str, str], CrdVersion]
) -> None:
    result = builds[kustomization.name]
    if isinstance(result, RuntimeError):
        pytest.fail(str(result), pytrace=False)
    errors = validate_objects(result.objects, crds)
    assert not errors, _report(errors)


def _kustomization_file(directory: Path) -> Path:
    return next(
        directory / name
        for name in ("kustomization.yaml", "kustomization.yml", "Kustomization")
        if (directory / name).exists()
    )


def _users_of(component_dir: Path) -> list[str]:
    """Buildable kustomizations that list this component under `components`."""
    users = []
    for kustomization in BUILDABLE:
        document = yaml.safe_load(_kustomization_file(kustomization.directory).read_text()) or {}
        for entry in document.get("components", []):
            if (kustomization.directory / entry).resolve() == component_dir.resolve():
                users.append(kustomization.name)
    return users


def _nearest_base(component_dir: Path) -> Path:
    for parent in component_dir.parents:
        if parent == REPO_ROOT.parent:
            break
        if any(k.directory == parent for k in BUILDABLE):
            return parent
    raise AssertionError(f"{_rel(component_dir)}: no kustomization above it to build it on")


@pytest.mark.parametrize("component", COMPONENTS, ids=lambda k: k.name)
def test_every_component_builds_and_validates_where_it_is_used(
    component, builds: dict[str, Any], kubectl: str, tmp_path: Path, crds: dict[tuple[str, str], CrdVersion]
) -> None:
    """Used components are covered by their users' builds; the others build on their nearest base."""
    users = _users_of(component.directory)
    for user in users:
        assert not isinstance(builds[user], RuntimeError), str(builds[user])
    if users:
        return
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    base = os.path.relpath(_nearest_base(component.directory), overlay)
    part = os.path.relpath(component.directory, overlay)
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({"resources": [base], "components": [part]}))
    errors = validate_objects(kustomize_build(kubectl, overlay), crds)
    assert not errors, _report(errors)


def _referenced_files(kustomization_dir: Path) -> set[Path]:
    """Files a kustomization reads: resources, patches, generator inputs (not directories)."""
    document = yaml.safe_load(_kustomization_file(kustomization_dir).read_text()) or {}
    entries: list[str] = list(document.get("resources", []))
    entries += [p["path"] for p in document.get("patches", []) if isinstance(p, dict) and "path" in p]
    entries += list(document.get("patchesStrategicMerge", []))
    entries += [p["path"] for p in document.get("patchesJson6902", []) if "path" in p]
    for generator in document.get("configMapGenerator", []) + document.get("secretGenerator", []):
        entries += [entry.split("=", 1)[-1] for entry in generator.get("files", [])]
    return {(kustomization_dir / entry).resolve() for entry in entries if (kustomization_dir / entry).is_file()}


def _is_kubernetes_object(document: Any) -> bool:
    return isinstance(document, dict) and "apiVersion" in document and "kind" in document


def test_standalone_manifests_validate_too(crds: dict[tuple[str, str], CrdVersion]) -> None:
    """A Kubernetes object file that no kustomization includes is validated on its own."""
    referenced: set[Path] = set()
    for kustomization in KUSTOMIZATIONS:
        referenced |= _referenced_files(kustomization.directory)
    errors: dict[str, list[str]] = {}
    for path in YAML_FILES:
        if path.name.startswith("kustomization") or path.resolve() in referenced:
            continue
        for document in yaml.safe_load_all(path.read_text()):
            if _is_kubernetes_object(document):
                problems = validate_object(document, crds, require_namespace=False)
                if problems:
                    errors[f"{_rel(path)}: {object_id(document)}"] = problems
    assert not errors, _report(errors)


def _object_key(obj: dict[str, Any]) -> tuple[str, str, str, str]:
    meta = obj["metadata"]
    return obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"]


def test_an_object_built_by_several_entry_points_is_identical_in_each(builds: dict[str, Any]) -> None:
    """deploy/ and deploy/neuron-compile/ both create the sd21 Namespace and the NodePools."""
    first_seen: dict[tuple[str, str, str, str], tuple[str, dict[str, Any]]] = {}
    entry_points = {name: result for name, result in builds.items() if name.startswith("deploy")}
    differing = []
    for name, result in sorted(entry_points.items()):
        if isinstance(result, RuntimeError):
            continue
        for obj in result.objects:
            key = _object_key(obj)
            if key in first_seen and first_seen[key][1] != obj:
                differing.append(f"{'/'.join(key)}: {first_seen[key][0]} vs {name}")
            first_seen.setdefault(key, (name, obj))
    weight_only = [d for d in differing if "InferenceGraph" in d]  # the weight sets differ on purpose
    assert sorted(set(differing) - set(weight_only)) == []


# --------------------------------------------------------------------------------------------
# The validator can fail: deliberately broken manifests are rejected.


@pytest.fixture(scope="module")
def valid_isvc(deploy: ObjectSet) -> dict[str, Any]:
    isvc = deploy.get("InferenceService", "sd21-inf2")
    assert isvc is not None
    return isvc


def _errors(obj: dict[str, Any], crds: dict[tuple[str, str], CrdVersion]) -> list[str]:
    return validate_object(obj, crds)


def test_validator_accepts_the_unmodified_inferenceservice(valid_isvc, crds) -> None:
    assert _errors(valid_isvc, crds) == []


def test_validator_rejects_a_misspelled_field(valid_isvc, crds) -> None:
    broken = copy.deepcopy(valid_isvc)
    broken["spec"]["predictor"]["model"]["storageURI"] = broken["spec"]["predictor"]["model"].pop("storageUri")
    errors = _errors(broken, crds)
    assert any("storageURI" in e and "spec.predictor.model" in e for e in errors), errors


def test_validator_rejects_a_wrong_type(valid_isvc, crds) -> None:
    broken = copy.deepcopy(valid_isvc)
    broken["spec"]["predictor"]["minReplicas"] = "1"
    assert any("minReplicas" in e for e in _errors(broken, crds))


def test_validator_rejects_a_value_outside_an_enum(valid_isvc, crds) -> None:
    broken = copy.deepcopy(valid_isvc)
    broken["spec"]["predictor"]["scaleMetric"] = "latency"
    assert any("scaleMetric" in e for e in _errors(broken, crds))


def test_validator_rejects_a_missing_required_field(deploy: ObjectSet, crds) -> None:
    graph = copy.deepcopy(deploy.get("InferenceGraph", "sd21-router"))
    del graph["spec"]["nodes"]
    assert any("'nodes' is a required property" in e for e in _errors(graph, crds))
    pool = copy.deepcopy(deploy.of_kind("NodePool")[0])
    del pool["spec"]["template"]["spec"]["nodeClassRef"]
    assert any("nodeClassRef" in e for e in _errors(pool, crds))


def test_validator_rejects_a_karpenter_enum_and_pattern_violation(deploy: ObjectSet, crds) -> None:
    pool = copy.deepcopy(deploy.of_kind("NodePool")[0])
    pool["spec"]["disruption"]["consolidationPolicy"] = "Sometimes"
    pool["spec"]["disruption"]["consolidateAfter"] = "ten minutes"
    errors = _errors(pool, crds)
    assert any("consolidationPolicy" in e for e in errors) and any("consolidateAfter" in e for e in errors)


def test_validator_rejects_an_unknown_metadata_field_and_a_bad_label(valid_isvc, crds) -> None:
    broken = copy.deepcopy(valid_isvc)
    broken["metadata"]["label"] = {"a": "b"}
    broken["metadata"]["labels"]["app.kubernetes.io/name"] = "not a valid value!"
    errors = _errors(broken, crds)
    assert any(e.startswith("metadata.") and "'label'" in e for e in errors), errors
    assert any("not a valid label value" in e for e in errors), errors


def test_validator_rejects_an_unknown_field_in_a_core_kind(neuron_compile: ObjectSet, crds) -> None:
    job = copy.deepcopy(neuron_compile.get("Job", "sd21-neuron-compile"))
    assert _errors(job, crds) == []
    job["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    assert any("resource" in e for e in _errors(job, crds))


def test_validator_rejects_kinds_it_has_no_schema_for(crds) -> None:
    knative_service = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "x", "namespace": "sd21"},
    }
    assert any("no Kubernetes" in e for e in _errors(knative_service, crds))


def test_validator_rejects_a_namespace_on_a_cluster_scoped_object(deploy: ObjectSet, crds) -> None:
    pool = copy.deepcopy(deploy.of_kind("NodePool")[0])
    pool["metadata"]["namespace"] = "sd21"
    assert any("cluster-scoped" in e for e in _errors(pool, crds))


def test_a_broken_kustomization_fails_the_build_with_kustomizes_message(kubectl: str, tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - missing.yaml\n")
    with pytest.raises(RuntimeError, match="missing.yaml"):
        kustomize_build(kubectl, tmp_path)


def test_a_broken_manifest_is_caught_through_build_and_validation(kubectl: str, tmp_path: Path, crds) -> None:
    (tmp_path / "isvc.yaml").write_text(
        "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata:\n  name: x\n"
        "spec:\n  predictor:\n    minReplica: 1\n"
    )
    (tmp_path / "kustomization.yaml").write_text("namespace: sd21\nresources:\n  - isvc.yaml\n")
    errors = validate_objects(kustomize_build(kubectl, tmp_path), crds)
    assert any("minReplica" in e for e in errors["InferenceService sd21/x"])


# --------------------------------------------------------------------------------------------
# docs/deploying.md refers to paths that exist.

DOC = REPO_ROOT / "docs" / "deploying.md"


def test_every_path_the_deploying_guide_applies_exists() -> None:
    text = DOC.read_text()
    applied = re.findall(r"kubectl (?:apply|delete)(?: [^\n]*?)? -k ([\w./-]+)", text)
    applied += re.findall(r"kubectl kustomize ([\w./-]+)", text)
    assert applied, "docs/deploying.md shows no `kubectl apply -k` command"
    for target in applied:
        directory = REPO_ROOT / target.rstrip("/")
        assert (directory / "kustomization.yaml").is_file(), f"docs/deploying.md applies {target}: no kustomization"
    for patch_file in re.findall(r"--patch-file ([\w./-]+)", text):
        assert (REPO_ROOT / patch_file).is_file(), f"docs/deploying.md patches with missing {patch_file}"
