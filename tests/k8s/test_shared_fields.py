"""What the deployment units, the runtimes and the capacity pools share is written once.

A unit file (inferenceservices/sd21-*.yaml), a runtime file (servingruntimes/diffusers-*.yaml) and
a pool file (nodepools/*.yaml) hold what is specific to them; the kustomize components
inferenceservices/components/unit, servingruntimes/components/predictor and
nodepools/components/pool add what they share. These tests read the source files (to
catch a shared field copied back into one of them) and the rendered builds (to check that every
unit and runtime still gets the shared fields).
"""

from __future__ import annotations

import re
import shutil
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8slib import REPO_ROOT, CrdVersion, ObjectSet, dig, find_yaml_files, kustomize_build, validate_objects
from test_crossrefs import effective_pod_spec, parse_predictor_args, pool_for, predictor_args, tolerates

UNITS_DIR = REPO_ROOT / "inferenceservices"
RUNTIMES_DIR = REPO_ROOT / "servingruntimes"
UNIT_COMPONENT = UNITS_DIR / "components" / "unit" / "unit.yaml"
RUNTIME_COMPONENT = RUNTIMES_DIR / "components" / "predictor" / "predictor.yaml"
POOLS_DIR = REPO_ROOT / "nodepools"
POOL_COMPONENTS = {
    "NodePool": POOLS_DIR / "components" / "pool" / "pool.yaml",
    "EC2NodeClass": POOLS_DIR / "components" / "pool" / "nodeclass.yaml",
}
# Every build that renders the units or the runtimes.
UNIT_BUILDS = ("inferenceservices", "deploy/serving", "deploy", "deploy/capacity-optimized")
RUNTIME_BUILDS = ("servingruntimes", "deploy/serving", "deploy", "deploy/capacity-optimized")
# A unit file is a handful of specific fields plus the comment on its scaling arithmetic.
MAX_UNIT_FILE_LINES = 40
MAX_RUNTIME_FILE_LINES = 80


def _documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _sources(directory: Path, kind: str) -> dict[Path, dict[str, Any]]:
    """The files a kustomization lists as resources that hold one object of this kind."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    found = {}
    for entry in kustomization.get("resources", []):
        path = directory / entry
        if path.is_file():
            docs = _documents(path)
            if len(docs) == 1 and docs[0].get("kind") == kind:
                found[path] = docs[0]
    assert found, f"no {kind} among the resources of {directory.relative_to(REPO_ROOT)}"
    return found


def unit_files() -> dict[Path, dict[str, Any]]:
    return _sources(UNITS_DIR, "InferenceService")


def runtime_files() -> dict[Path, dict[str, Any]]:
    return _sources(RUNTIMES_DIR, "ClusterServingRuntime")


def nodepool_files() -> dict[Path, dict[str, Any]]:
    return _sources(POOLS_DIR, "NodePool")


def nodeclass_files() -> dict[Path, dict[str, Any]]:
    return _sources(POOLS_DIR, "EC2NodeClass")


def leaves(node: Any, path: str = "") -> set[tuple[str, str]]:
    """(path, value) of every scalar, so a shared entry is found whatever its position in a list:
    a list item with a `name` (container, env variable, volume) is addressed by it and looked
    into; any other list item (a toleration, a node requirement, a disk) counts as one value; a
    list of scalars by membership."""
    if isinstance(node, dict):
        found: set[tuple[str, str]] = set()
        for key, value in node.items():
            found |= leaves(value, f"{path}.{key}")
        return found
    if isinstance(node, list):
        found = set()
        for index, item in enumerate(node):
            if isinstance(item, dict) and "name" in item:
                found |= leaves(item, f"{path}[{item['name']}]")
            elif isinstance(item, dict):
                found.add((f"{path}[{item.get('key', index)}]", repr(sorted(item.items()))))
            else:
                found.add((f"{path}[]", repr(item)))
        return found
    return {(path, repr(node))}


def _identity(leaf: tuple[str, str]) -> bool:
    """apiVersion, kind and the `name` that addresses a list item are not fields to share."""
    path = leaf[0]
    return path in (".apiVersion", ".kind") or (path.endswith("].name") and path.count("[") >= 1)


def _written_in_every(files: dict[Path, dict[str, Any]]) -> set[tuple[str, str]]:
    common = set.intersection(*(leaves(doc) for doc in files.values()))
    return {leaf for leaf in common if not _identity(leaf)}


# --------------------------------------------------------------------------------------------
# the source files


def test_unit_files_are_a_few_lines_of_what_is_specific_to_the_unit() -> None:
    for path in unit_files():
        lines = len(path.read_text().splitlines())
        assert lines <= MAX_UNIT_FILE_LINES, f"{path.name}: {lines} lines; shared fields go to components/unit"


def test_runtime_files_hold_what_is_specific_to_their_accelerator() -> None:
    for path in runtime_files():
        lines = len(path.read_text().splitlines())
        assert lines <= MAX_RUNTIME_FILE_LINES, f"{path.name}: {lines} lines; shared parts go to components/predictor"


@pytest.mark.parametrize(
    "files",
    [unit_files, runtime_files, nodepool_files, nodeclass_files],
    ids=["units", "runtimes", "nodepools", "ec2nodeclasses"],
)
def test_no_field_is_written_identically_in_every_file(files) -> None:
    """A field with the same value in every unit (runtime, pool) belongs in the shared component."""
    assert _written_in_every(files()) == set()


def _patched_paths(component_file: Path) -> set[str]:
    (component,) = _documents(component_file)
    return {path for path, _ in leaves(component) if path not in (".apiVersion", ".kind", ".metadata.name")}


@pytest.mark.parametrize(
    ("component_file", "files"),
    [
        (UNIT_COMPONENT, unit_files),
        (POOL_COMPONENTS["NodePool"], nodepool_files),
        (POOL_COMPONENTS["EC2NodeClass"], nodeclass_files),
    ],
    ids=["units", "nodepools", "ec2nodeclasses"],
)
def test_no_file_sets_a_field_of_its_strategic_merge_component(component_file: Path, files) -> None:
    """The component's patch would silently win over the file's own value."""
    shared_paths = _patched_paths(component_file)
    for path, doc in files().items():
        overlap = {p for p, _ in leaves(doc)} & shared_paths
        assert overlap == set(), f"{path.name} sets {sorted(overlap)}, which {component_file.parent.name} sets"


def _json_pointer_get(doc: Any, pointer: str) -> Any:
    for token in pointer.lstrip("/").split("/"):
        if isinstance(doc, list) and token.isdigit() and int(token) < len(doc):
            doc = doc[int(token)]
        elif isinstance(doc, dict) and token in doc:
            doc = doc[token]
        else:
            return None
    return doc


def _runtime_ops() -> list[dict[str, Any]]:
    (ops,) = _documents(RUNTIME_COMPONENT)
    assert all(op["op"] == "add" for op in ops), "the shared runtime patch only adds"
    return ops


def _is_insertion(op: dict[str, Any]) -> bool:
    """An add into a list (`.../-` or `.../<index>`) inserts; any other add sets a field."""
    last = op["path"].rsplit("/", 1)[1]
    return last == "-" or last.isdigit()


def test_no_runtime_file_sets_a_field_of_the_shared_runtime_component() -> None:
    for path, doc in runtime_files().items():
        for op in _runtime_ops():
            if _is_insertion(op):
                parent = _json_pointer_get(doc, op["path"].rsplit("/", 1)[0])
                assert isinstance(parent, list), f"{path.name}: {op['path']} needs a list to insert into"
                assert op["value"] not in parent, f"{path.name} repeats {op['value']!r} of components/predictor"
            else:
                existing = _json_pointer_get(doc, op["path"])
                assert existing is None, f"{path.name} sets {op['path']}, which components/predictor sets"


# --------------------------------------------------------------------------------------------
# the rendered objects


def _is_subset(shared: Any, rendered: Any) -> bool:
    if isinstance(shared, dict):
        return isinstance(rendered, dict) and all(
            key in rendered and _is_subset(value, rendered[key]) for key, value in shared.items()
        )
    return shared == rendered


def _build(builds: dict[str, Any], name: str) -> ObjectSet:
    result = builds[name]
    if isinstance(result, RuntimeError):
        pytest.fail(str(result), pytrace=False)
    return result


@pytest.mark.parametrize("build", UNIT_BUILDS)
def test_every_rendered_inferenceservice_carries_the_shared_unit_fields(builds: dict[str, Any], build: str) -> None:
    (component,) = _documents(UNIT_COMPONENT)
    shared = {"metadata": {"annotations": component["metadata"]["annotations"]}, "spec": component["spec"]}
    units = _build(builds, build).of_kind("InferenceService")
    assert {unit["metadata"]["name"] for unit in units} == {doc["metadata"]["name"] for doc in unit_files().values()}
    for unit in units:
        assert _is_subset(shared, unit), f"{build}: {unit['metadata']['name']} lacks fields of components/unit"


@pytest.mark.parametrize("build", RUNTIME_BUILDS)
def test_every_rendered_runtime_carries_the_shared_runtime_parts(builds: dict[str, Any], build: str) -> None:
    runtimes = _build(builds, build).of_kind("ClusterServingRuntime")
    assert {r["metadata"]["name"] for r in runtimes} == {doc["metadata"]["name"] for doc in runtime_files().values()}
    for runtime in runtimes:
        name = runtime["metadata"]["name"]
        for op in _runtime_ops():
            if _is_insertion(op):
                assert op["value"] in _json_pointer_get(runtime, op["path"].rsplit("/", 1)[0]), f"{name}: {op}"
            else:
                assert _json_pointer_get(runtime, op["path"]) == op["value"], f"{name}: {op['path']}"
        args = dig(runtime, "spec", "containers", 0, "args")
        flags = [arg.split("=", 1)[0] for arg in args]
        assert len(flags) == len(set(flags)), f"{name}: a flag given twice: {args}"


@pytest.mark.parametrize("kind", sorted(POOL_COMPONENTS))
def test_every_rendered_pool_and_node_class_carries_the_shared_pool_fields(builds: dict[str, Any], kind: str) -> None:
    """On the nodepools/ base (deploy/settings then replaces CLUSTER_NAME)."""
    (component,) = _documents(POOL_COMPONENTS[kind])
    rendered = _build(builds, "nodepools").of_kind(kind)
    sources = nodepool_files() if kind == "NodePool" else nodeclass_files()
    assert {o["metadata"]["name"] for o in rendered} == {doc["metadata"]["name"] for doc in sources.values()}
    for obj in rendered:
        assert _is_subset({"spec": component["spec"]}, obj), f"{obj['metadata']['name']} lacks components/pool"
        if kind == "NodePool":
            requirements = dig(obj, "spec", "template", "spec", "requirements")
            assert {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]} in requirements


def test_units_leave_the_device_tolerations_to_their_runtime(deploy: ObjectSet) -> None:
    """A unit's own tolerations would replace its runtime's (KServe MergePodSpec, see test_crossrefs)."""
    for unit in deploy.of_kind("InferenceService"):
        assert "tolerations" not in unit["spec"]["predictor"], unit["metadata"]["name"]
    for runtime in deploy.of_kind("ClusterServingRuntime"):
        assert runtime["spec"].get("tolerations"), f"{runtime['metadata']['name']}: no tolerations of its pools"


# --------------------------------------------------------------------------------------------
# written once across the repository


def _objects_in_sources() -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for path in find_yaml_files(REPO_ROOT):
        for doc in _documents(path):
            if isinstance(doc, dict) and "kind" in doc:
                found.append((path, doc))
    return found


def test_each_traffic_weight_set_is_written_once() -> None:
    weight_sets = []
    for path, doc in _objects_in_sources():
        steps = dig(doc, "spec", "nodes", "root", "steps", default=[])
        if doc["kind"] == "InferenceGraph" and any("weight" in step for step in steps):
            weight_sets.append((path, tuple((step["serviceName"], step.get("weight")) for step in steps)))
    assert len(weight_sets) >= 2, "expected the cost- and capacity-optimized sets"
    repeated = [weights for weights, count in Counter(w for _, w in weight_sets).items() if count > 1]
    where = {
        weights: [p.relative_to(REPO_ROOT).as_posix() for p, w in weight_sets if w == weights] for weights in repeated
    }
    assert not repeated, f"one weight set written in several files: {where}"


def test_the_sd21_namespace_is_written_once() -> None:
    files = [
        path.relative_to(REPO_ROOT).as_posix()
        for path, doc in _objects_in_sources()
        if doc["kind"] == "Namespace" and dig(doc, "metadata", "name") == "sd21"
    ]
    assert len(files) == 1, f"Namespace sd21 is written in {files}"


# --------------------------------------------------------------------------------------------
# docs/deploying.md, "Adding a unit": the recipe's unit file is all a unit needs

GUIDE = REPO_ROOT / "docs" / "deploying.md"
# What deploy/ builds from (copied, so that the recipe's steps can be applied to the copy).
MANIFEST_DIRS = ("inferenceservices", "servingruntimes", "nodepools", "deploy", "controller/deploy")
WEIGHT_SET_FILES = (
    "inferenceservices/inferencegraph.yaml",
    "inferenceservices/components/capacity-optimized/weights.yaml",
)


def _recipe_unit_file() -> str:
    section = GUIDE.read_text().split("\n## Adding a unit\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert match, "docs/deploying.md, Adding a unit: no yaml block"
    return textwrap.dedent(match.group(1))


def _edit_yaml(path: Path, edit) -> None:
    document = yaml.safe_load(path.read_text())
    edit(document)
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def test_the_guides_recipe_adds_a_unit_that_gets_the_shared_fields_and_lands_on_its_pool(
    kubectl: str, tmp_path: Path, crds: dict[tuple[str, str], CrdVersion]
) -> None:
    text = _recipe_unit_file()
    assert len(text.splitlines()) <= MAX_UNIT_FILE_LINES
    unit = yaml.safe_load(text)
    name = unit["metadata"]["name"]
    for directory in MANIFEST_DIRS:
        shutil.copytree(REPO_ROOT / directory, tmp_path / directory, ignore=shutil.ignore_patterns("__pycache__"))
    # Steps 1-3 of the recipe, on the copy.
    (tmp_path / "inferenceservices" / f"{name}.yaml").write_text(text)
    _edit_yaml(tmp_path / "inferenceservices" / "kustomization.yaml", lambda k: k["resources"].append(f"{name}.yaml"))
    step = {"name": name, "serviceName": name, "weight": 0}
    for weight_set in WEIGHT_SET_FILES:
        _edit_yaml(tmp_path / weight_set, lambda graph: graph["spec"]["nodes"]["root"]["steps"].append(step))

    objects = ObjectSet(kustomize_build(kubectl, tmp_path / "deploy"))
    assert validate_objects(objects.objects, crds) == {}
    built = objects.get("InferenceService", name, "sd21")
    assert built is not None
    (component,) = _documents(UNIT_COMPONENT)
    assert _is_subset({"metadata": {"annotations": component["metadata"]["annotations"]}}, built)
    assert _is_subset({"spec": component["spec"]}, built)
    pod_spec = effective_pod_spec(objects, built)
    pool = pool_for(objects, pod_spec, name)
    for taint in dig(pool, "spec", "template", "spec", "taints", default=[]):
        assert any(tolerates(t, taint) for t in pod_spec["tolerations"]), f"{name}: does not tolerate {taint}"
    assert parse_predictor_args(predictor_args(objects, built)).model_name == name
