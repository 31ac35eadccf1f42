"""Cross-references between the manifests, and the rules that make them work on a real cluster.

Each InferenceService's runtime exists, its pod lands on exactly one Karpenter pool, the graph
routes to every unit with weights summing to 100, the runtime's arguments are accepted by the
predictor's own parser, and the scaling numbers follow the documented breaking-point arithmetic.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from typing import Any

import pytest
from k8slib import REPO_ROOT, ObjectSet, dig

from predictor.args import build_parser

NAMESPACE = "sd21"
GRAPH = "sd21-router"
UNITS = ("sd21-inf2", "sd21-trn1", "sd21-g5-triton", "sd21-g6-triton", "sd21-g5-cuda", "sd21-cpu")
POOL_LABEL = "hw-agnostic-inference/capacity-pool"

# The seed's breaking points (sample README, Tables 1 and 2): requests per minute one pod
# sustains, latency in seconds, on-demand $/hour of the instance. docs/deploying.md explains
# the units; the CPU unit has no measurement.
SEED = {
    "sd21-inf2": {"rpm": 105, "latency": 0.67, "price": 0.7582, "pool": "inf2"},
    "sd21-trn1": {"rpm": 130, "latency": 0.51, "price": 1.3438, "pool": "trn1"},
    "sd21-g5-triton": {"rpm": 90, "latency": 0.68, "price": 1.0060, "pool": "g5"},
    "sd21-g6-triton": {"rpm": 61, "latency": 0.96, "price": 0.8048, "pool": "g6"},
    "sd21-g5-cuda": {"rpm": 60, "latency": 0.92, "price": 1.0060, "pool": "g5"},
}
HEADROOM = 0.8  # scale out at 80% of the in-flight count at the breaking point
COST_WEIGHTS = {"sd21-inf2": 40, "sd21-trn1": 20, "sd21-g5-triton": 15, "sd21-g6-triton": 10, "sd21-g5-cuda": 15}

ACCELERATOR_RESOURCES = {"neuron": "aws.amazon.com/neuron", "nvidia": "nvidia.com/gpu"}
DEVICE_FLAG = {"neuron": "neuron", "nvidia": "cuda", "cpu": "cpu"}
FAMILY_ACCELERATOR = {"inf2": "neuron", "trn1": "neuron", "g5": "nvidia", "g6": "nvidia"}

# Knative Serving constraints on the revision's pod spec (knative.dev/serving pkg/apis/serving).
KNATIVE_PORT_NAMES = {"", "http1", "h2c"}
KNATIVE_RESERVED_PORTS = {8012, 8013, 8022, 8112, 9090, 9091, 8008}
KNATIVE_MAX_REVISION_TIMEOUT = 600  # config-defaults max-revision-timeout-seconds default
KNATIVE_AUTOSCALING_KEYS = {
    "class",
    "target-utilization-percentage",
    "scale-down-delay",
    "scale-to-zero-pod-retention-period",
    "window",
    "panic-window-percentage",
    "panic-threshold-percentage",
    "target-burst-capacity",
    "initial-scale",
    "activation-scale",
    "metric-aggregation-algorithm",
}
# KServe writes these from minReplicas/maxReplicas/scaleTarget/scaleMetric: setting them too conflicts.
KSERVE_OWNED_ANNOTATIONS = {"min-scale", "max-scale", "target", "metric"}


# --------------------------------------------------------------------------------------------
# helpers


def isvcs(objects: ObjectSet) -> list[dict[str, Any]]:
    return objects.of_kind("InferenceService")


def runtime_of(objects: ObjectSet, isvc: dict[str, Any]) -> dict[str, Any]:
    name = dig(isvc, "spec", "predictor", "model", "runtime")
    runtime = objects.get("ClusterServingRuntime", name) or objects.get(
        "ServingRuntime", name, dig(isvc, "metadata", "namespace")
    )
    assert runtime is not None, f"{isvc['metadata']['name']}: runtime {name!r} does not exist"
    return runtime


def kserve_container(runtime: dict[str, Any]) -> dict[str, Any]:
    containers = runtime["spec"]["containers"]
    named = [c for c in containers if c["name"] == "kserve-container"]
    assert len(named) == 1, f"{runtime['metadata']['name']}: needs one container named kserve-container"
    return named[0]


def render(text: str, isvc: dict[str, Any]) -> str:
    """KServe renders runtime containers as Go templates over the ISVC's metadata."""
    return text.replace("{{.Name}}", isvc["metadata"]["name"]).replace(
        "{{.Namespace}}", isvc["metadata"].get("namespace", "")
    )


def predictor_args(objects: ObjectSet, isvc: dict[str, Any]) -> list[str]:
    """What the pod runs: runtime args then the ISVC's (KServe concatenates them)."""
    runtime_args = kserve_container(runtime_of(objects, isvc)).get("args", [])
    isvc_args = dig(isvc, "spec", "predictor", "model", "args", default=[])
    return [render(arg, isvc) for arg in [*runtime_args, *isvc_args]]


def parse_predictor_args(args: list[str]) -> Any:
    parser = build_parser()
    try:
        return parser.parse_args(args)
    except SystemExit as err:  # argparse exits on unknown or invalid arguments
        raise AssertionError(f"the predictor's parser rejects {shlex.join(args)}") from err


def accelerator_of(runtime: dict[str, Any]) -> str:
    return runtime["metadata"]["labels"]["hw-agnostic-inference/accelerator"]


def pool_labels(pool: dict[str, Any]) -> dict[str, set[str]]:
    """Label key -> values a node of this NodePool can carry (template labels, requirements)."""
    labels: dict[str, set[str]] = {k: {v} for k, v in dig(pool, "spec", "template", "metadata", "labels").items()}
    labels["karpenter.sh/nodepool"] = {pool["metadata"]["name"]}
    for requirement in dig(pool, "spec", "template", "spec", "requirements", default=[]):
        if requirement["operator"] == "In":
            labels[requirement["key"]] = set(requirement["values"])
    families = labels.get("karpenter.k8s.aws/instance-family", set())
    sizes = labels.get("karpenter.k8s.aws/instance-size", set())
    labels.setdefault("node.kubernetes.io/instance-type", {f"{f}.{s}" for f in families for s in sizes})
    return labels


def selects(node_selector: dict[str, str], pool: dict[str, Any]) -> bool:
    labels = pool_labels(pool)
    return all(value in labels.get(key, set()) for key, value in node_selector.items())


def tolerates(toleration: dict[str, Any], taint: dict[str, Any]) -> bool:
    """core/v1 Toleration.ToleratesTaint."""
    if toleration.get("effect") and toleration["effect"] != taint["effect"]:
        return False
    if toleration.get("key") and toleration["key"] != taint["key"]:
        return False
    if toleration.get("operator", "Equal") == "Exists":
        return True
    return toleration.get("value", "") == taint.get("value", "")


def pool_for(objects: ObjectSet, pod_spec: dict[str, Any], owner: str) -> dict[str, Any]:
    selector = pod_spec.get("nodeSelector") or {}
    assert POOL_LABEL in selector, f"{owner}: nodeSelector must pin {POOL_LABEL}"
    matching = [pool for pool in objects.of_kind("NodePool") if selects(selector, pool)]
    assert len(matching) == 1, (
        f"{owner}: nodeSelector {selector} matches NodePools {[p['metadata']['name'] for p in matching]}"
    )
    return matching[0]


def family_of(pool: dict[str, Any]) -> set[str]:
    return pool_labels(pool).get("karpenter.k8s.aws/instance-family", set())


def quantity(value: Any) -> float:
    """Kubernetes quantity -> float (cpu in cores, memory in bytes)."""
    text = str(value)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


# The pod-level scheduling fields a ServingRuntime may carry (v1alpha1.ServingRuntimePodSpec).
RUNTIME_SCHEDULING_FIELDS = ("nodeSelector", "tolerations", "affinity")


def effective_pod_spec(objects: ObjectSet, isvc: dict[str, Any]) -> dict[str, Any]:
    """The scheduling fields of the predictor's pod: the runtime's with the InferenceService's over them.

    KServe's MergePodSpec (pkg/controller/v1beta1/inferenceservice/utils/utils.go, v0.16.0 to
    master) strategic-merges the InferenceService's PodSpec over the runtime's nodeSelector,
    affinity and tolerations with corev1.PodSpec's patch metadata: nodeSelector merges key by
    key; tolerations have no merge key, so an InferenceService that sets any replaces the
    runtime's; affinity is merged as a struct (here: the InferenceService's, when set, wins).
    """
    runtime_spec = runtime_of(objects, isvc)["spec"]
    predictor = isvc["spec"]["predictor"]
    merged: dict[str, Any] = {
        "nodeSelector": {**runtime_spec.get("nodeSelector", {}), **predictor.get("nodeSelector", {})},
        "tolerations": predictor.get("tolerations") or runtime_spec.get("tolerations", []),
    }
    affinity = predictor.get("affinity") or runtime_spec.get("affinity")
    if affinity:
        merged["affinity"] = affinity
    return merged


def effective_resources(objects: ObjectSet, isvc: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Runtime container resources with the ISVC's merged over them (strategic merge of maps)."""
    runtime_res = kserve_container(runtime_of(objects, isvc)).get("resources", {})
    isvc_res = dig(isvc, "spec", "predictor", "model", "resources", default={})
    merged = {}
    for kind in ("requests", "limits"):
        values = {**runtime_res.get(kind, {}), **isvc_res.get(kind, {})}
        merged[kind] = {key: quantity(value) for key, value in values.items()}
    return merged


def graph_weights(objects: ObjectSet) -> dict[str, int]:
    graph = objects.get("InferenceGraph", GRAPH, NAMESPACE)
    assert graph is not None, f"InferenceGraph {NAMESPACE}/{GRAPH} missing"
    root = graph["spec"]["nodes"]["root"]
    assert root["routerType"] == "Splitter"
    return {step["serviceName"]: step["weight"] for step in root["steps"]}


def assert_weights_valid(objects: ObjectSet, label: str) -> None:
    graph = objects.get("InferenceGraph", GRAPH, NAMESPACE)
    steps = graph["spec"]["nodes"]["root"]["steps"]
    names = [step.get("name") for step in steps]
    assert len(set(names)) == len(names), f"{label}: duplicate step names {names}"
    for step in steps:
        assert step.get("name") == step.get("serviceName"), f"{label}: step name differs from its service"
        assert objects.get("InferenceService", step["serviceName"], NAMESPACE), (
            f"{label}: step {step['serviceName']} names no InferenceService in {NAMESPACE}"
        )
        assert isinstance(step.get("weight"), int) and 0 <= step["weight"] <= 100
    assert sum(step["weight"] for step in steps) == 100, f"{label}: weights sum to {sum(s['weight'] for s in steps)}"


# --------------------------------------------------------------------------------------------
# runtimes


def test_the_deployment_units_are_the_agreed_inferenceservices(deploy: ObjectSet) -> None:
    assert {isvc["metadata"]["name"] for isvc in isvcs(deploy)} == set(UNITS)
    assert all(isvc["metadata"]["namespace"] == NAMESPACE for isvc in isvcs(deploy))


def test_every_inferenceservice_names_an_existing_runtime_that_supports_its_model_format(deploy: ObjectSet) -> None:
    for isvc in isvcs(deploy):
        runtime = runtime_of(deploy, isvc)
        model_format = dig(isvc, "spec", "predictor", "model", "modelFormat", "name")
        supported = {fmt["name"] for fmt in runtime["spec"]["supportedModelFormats"]}
        assert model_format in supported, (
            f"{isvc['metadata']['name']}: {runtime['metadata']['name']} lacks {model_format}"
        )
        assert not runtime["spec"].get("disabled", False)


def test_runtimes_speak_v1_v2_and_grpc_v2_and_declare_their_accelerator(deploy: ObjectSet) -> None:
    runtimes = deploy.of_kind("ClusterServingRuntime")
    assert {accelerator_of(r) for r in runtimes} == {"neuron", "nvidia", "cpu"}
    for runtime in runtimes:
        assert runtime["spec"]["protocolVersions"] == ["v1", "v2", "grpc-v2"]


def test_runtime_args_are_accepted_by_the_predictors_own_argument_parser(deploy: ObjectSet) -> None:
    for runtime in deploy.of_kind("ClusterServingRuntime"):
        fake_isvc = {"metadata": {"name": "probe-model", "namespace": NAMESPACE}}
        args = [render(arg, fake_isvc) for arg in kserve_container(runtime).get("args", [])]
        parse_predictor_args(args)
    for isvc in isvcs(deploy):
        parse_predictor_args(predictor_args(deploy, isvc))


def test_runtime_args_match_what_the_pod_and_the_graph_expect(deploy: ObjectSet) -> None:
    for isvc in isvcs(deploy):
        name = isvc["metadata"]["name"]
        runtime = runtime_of(deploy, isvc)
        container = kserve_container(runtime)
        args = parse_predictor_args(predictor_args(deploy, isvc))
        # The graph and the probes address the model by the ISVC's name.
        assert args.model_name == name
        assert args.model_dir == "/mnt/models", "KServe's storage initializer mounts storageUri here"
        (port,) = container["ports"]
        assert args.http_port == port["containerPort"] == 8080
        assert args.grpc_port == 8081
        assert args.device == DEVICE_FLAG[accelerator_of(runtime)]
        # The predictor never 503s a request that Knative's queue-proxy let in.
        concurrency = isvc["spec"]["predictor"]["containerConcurrency"]
        assert args.max_queue_size >= concurrency, f"{name}: --max_queue_size < containerConcurrency"
        assert args.default_height <= args.max_height and args.default_width <= args.max_width


def test_torch_compile_units_are_the_triton_ones(deploy: ObjectSet) -> None:
    for isvc in isvcs(deploy):
        args = parse_predictor_args(predictor_args(deploy, isvc))
        assert args.torch_compile == isvc["metadata"]["name"].endswith("-triton")


def test_probes_use_the_per_model_ready_endpoint_on_the_served_port(deploy: ObjectSet) -> None:
    for isvc in isvcs(deploy):
        name = isvc["metadata"]["name"]
        container = kserve_container(runtime_of(deploy, isvc))
        (port,) = container["ports"]
        readiness = container["readinessProbe"]["httpGet"]
        assert render(readiness["path"], isvc) == f"/v2/models/{name}/ready"
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert container[probe]["httpGet"]["port"] in (port["name"], port["containerPort"])
        # Model load and warm-up take minutes: startup must allow far more than the liveness window.
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 15 * 60


def test_runtime_containers_meet_knatives_pod_spec_rules(deploy: ObjectSet) -> None:
    for runtime in deploy.of_kind("ClusterServingRuntime"):
        name = runtime["metadata"]["name"]
        container = kserve_container(runtime)
        ports = container.get("ports", [])
        assert len(ports) == 1, f"{name}: Knative routes exactly one container port"
        assert ports[0].get("name", "") in KNATIVE_PORT_NAMES
        assert ports[0].get("protocol", "TCP") == "TCP"
        assert ports[0]["containerPort"] not in KNATIVE_RESERVED_PORTS
        assert "lifecycle" not in container, f"{name}: Knative rejects lifecycle hooks"
        assert "command" not in container, f"{name}: the image's ENTRYPOINT runs the predictor"


def test_inferenceservice_pod_fields_are_enabled_in_knatives_config_features(deploy: ObjectSet) -> None:
    import yaml

    features = yaml.safe_load((REPO_ROOT / "deploy" / "knative" / "config-features.yaml").read_text())["data"]
    flags = {"nodeSelector": "kubernetes.podspec-nodeselector", "tolerations": "kubernetes.podspec-tolerations"}
    flags |= {"affinity": "kubernetes.podspec-affinity"}
    for isvc in isvcs(deploy):
        pod_spec = effective_pod_spec(deploy, isvc)  # the runtime's fields reach the pod too
        for pod_field, flag in flags.items():
            if pod_spec.get(pod_field):
                assert features.get(flag) == "enabled", f"{isvc['metadata']['name']} uses {pod_field}: enable {flag}"


def test_runtime_device_resources_match_the_accelerator(deploy: ObjectSet) -> None:
    for isvc in isvcs(deploy):
        runtime = runtime_of(deploy, isvc)
        accelerator = accelerator_of(runtime)
        resources = effective_resources(deploy, isvc)
        for kind in ("requests", "limits"):
            devices = {key for key in resources[kind] if key in ACCELERATOR_RESOURCES.values()}
            expected = {ACCELERATOR_RESOURCES[accelerator]} if accelerator in ACCELERATOR_RESOURCES else set()
            assert devices == expected, f"{isvc['metadata']['name']} {kind}: {devices}"
        assert "memory" in resources["limits"] and "cpu" in resources["requests"]


def test_serving_containers_are_non_root_and_hardened(deploy: ObjectSet, neuron_compile: ObjectSet) -> None:
    containers = [
        (r["metadata"]["name"], kserve_container(r), r["spec"]) for r in deploy.of_kind("ClusterServingRuntime")
    ]
    job = neuron_compile.get("Job", "sd21-neuron-compile")
    pod = job["spec"]["template"]["spec"]
    containers += [("neuron-compile", c, pod) for c in pod["containers"]]
    for owner, container, spec in containers:
        context = container.get("securityContext", {})
        pod_context = spec.get("securityContext", {})
        assert context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is True, owner
        assert context.get("runAsUser", pod_context.get("runAsUser", 0)) != 0, owner
        assert context.get("allowPrivilegeEscalation") is False, owner
        assert context.get("privileged", False) is False, owner
        assert context.get("capabilities", {}).get("drop") == ["ALL"], owner
        seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {}))
        assert seccomp.get("type") == "RuntimeDefault", owner
        volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
        mounts = {mount["mountPath"]: mount["name"] for mount in container.get("volumeMounts", [])}
        assert set(mounts.values()) <= set(volumes), f"{owner}: mounts an undeclared volume"
        assert volumes[mounts["/dev/shm"]]["emptyDir"].get("medium") == "Memory", f"{owner}: /dev/shm for torch"
        assert "/tmp" in mounts, owner
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert any(env["HF_HOME"].startswith(path) for path in mounts), f"{owner}: HF_HOME must be on a volume"
        if owner in ("diffusers-nvidia", "diffusers-cpu"):
            assert context.get("readOnlyRootFilesystem") is True, owner


# --------------------------------------------------------------------------------------------
# capacity: NodePools, EC2NodeClasses


def test_every_inferenceservice_lands_on_exactly_one_nodepool_whose_taints_it_tolerates(deploy: ObjectSet) -> None:
    for isvc in isvcs(deploy):
        name = isvc["metadata"]["name"]
        pod_spec = effective_pod_spec(deploy, isvc)
        pool = pool_for(deploy, pod_spec, name)
        taints = dig(pool, "spec", "template", "spec", "taints", default=[])
        tolerations = pod_spec["tolerations"]
        for taint in taints:
            assert any(tolerates(t, taint) for t in tolerations), f"{name}: does not tolerate {taint}"
        for toleration in tolerations:
            assert any(tolerates(toleration, taint) for taint in taints), (
                f"{name}: toleration {toleration} matches no taint of {pool['metadata']['name']}"
            )


def test_every_unit_runs_on_the_pool_the_seed_measured_it_on(deploy: ObjectSet) -> None:
    for isvc in isvcs(deploy):
        name = isvc["metadata"]["name"]
        pool = pool_for(deploy, effective_pod_spec(deploy, isvc), name)
        expected = SEED[name]["pool"] if name in SEED else "cpu"
        assert pool_labels(pool)[POOL_LABEL] == {expected}


def test_accelerator_pods_land_on_pools_of_that_accelerator(deploy: ObjectSet) -> None:
    for isvc in isvcs(deploy):
        accelerator = accelerator_of(runtime_of(deploy, isvc))
        pool = pool_for(deploy, effective_pod_spec(deploy, isvc), isvc["metadata"]["name"])
        families = family_of(pool)
        assert {FAMILY_ACCELERATOR.get(f, "cpu") for f in families} == {accelerator}, (
            f"{isvc['metadata']['name']}: {accelerator} runtime on {families}"
        )


def test_nodepools_reference_existing_ec2nodeclasses(deploy: ObjectSet) -> None:
    classes = deploy.names("EC2NodeClass")
    for pool in deploy.of_kind("NodePool"):
        ref = pool["spec"]["template"]["spec"]["nodeClassRef"]
        assert ref["group"] == "karpenter.k8s.aws" and ref["kind"] == "EC2NodeClass"
        assert ref["name"] in classes, f"{pool['metadata']['name']}: no EC2NodeClass {ref['name']}"


def test_nodepool_limits_admit_every_units_max_replicas(deploy: ObjectSet, neuron_compile: ObjectSet) -> None:
    demand: dict[str, dict[str, float]] = {}
    for isvc in isvcs(deploy):
        pool = pool_for(deploy, effective_pod_spec(deploy, isvc), isvc["metadata"]["name"])["metadata"]["name"]
        replicas = isvc["spec"]["predictor"]["maxReplicas"]
        for resource, amount in effective_resources(deploy, isvc)["requests"].items():
            if resource in ("cpu", *ACCELERATOR_RESOURCES.values()):
                demand.setdefault(pool, {}).setdefault(resource, 0.0)
                demand[pool][resource] += replicas * amount
    job = neuron_compile.get("Job", "sd21-neuron-compile")["spec"]["template"]["spec"]
    job_pool = pool_for(deploy, job, "neuron-compile")["metadata"]["name"]
    for resource, amount in job["containers"][0]["resources"]["requests"].items():
        if resource in ("cpu", *ACCELERATOR_RESOURCES.values()):
            demand[job_pool][resource] = demand[job_pool].get(resource, 0.0) + quantity(amount)
    for pool_name, needs in demand.items():
        limits = deploy.get("NodePool", pool_name)["spec"]["limits"]
        for resource, amount in needs.items():
            assert resource in limits, f"{pool_name}: no limit on {resource}"
            assert quantity(limits[resource]) >= amount, f"{pool_name}: {resource} limit below {amount}"


def _cost_per_inference(unit: str) -> float:
    seed = SEED[unit]
    return seed["price"] / seed["rpm"]


def test_nodepool_weights_prefer_the_cheapest_cost_of_inference(deploy: ObjectSet) -> None:
    best: dict[str, float] = {}
    for unit in SEED:
        best[SEED[unit]["pool"]] = min(best.get(SEED[unit]["pool"], math.inf), _cost_per_inference(unit))
    weights = {}
    for pool in deploy.of_kind("NodePool"):
        (label,) = pool_labels(pool)[POOL_LABEL]
        weights[label] = pool["spec"]["weight"]
    by_cost = sorted(best, key=best.get)
    assert sorted(by_cost, key=weights.get, reverse=True) == by_cost
    assert weights["cpu"] == min(weights.values()), "the CPU pool is the last resort"


def test_nodepool_disruption_never_repacks_running_serving_pods(deploy: ObjectSet) -> None:
    for pool in deploy.of_kind("NodePool"):
        name = pool["metadata"]["name"]
        disruption = pool["spec"]["disruption"]
        assert disruption["consolidationPolicy"] == "WhenEmpty", name
        assert disruption.get("budgets"), f"{name}: bound concurrent disruptions"
        template = pool["spec"]["template"]["spec"]
        assert template.get("terminationGracePeriod"), f"{name}: drained pods need a grace period"
    for isvc in isvcs(deploy):
        annotations = isvc["spec"]["predictor"].get("annotations", {})
        assert annotations.get("karpenter.sh/do-not-disrupt") == "true", isvc["metadata"]["name"]


_RESTRICTED_KARPENTER_SH = {"karpenter.sh/capacity-type", "karpenter.sh/nodepool"}
_ALLOWED_KARPENTER_AWS = {
    "karpenter.k8s.aws/instance-family",
    "karpenter.k8s.aws/instance-size",
    "karpenter.k8s.aws/instance-category",
    "karpenter.k8s.aws/instance-generation",
    "karpenter.k8s.aws/instance-gpu-name",
    "karpenter.k8s.aws/instance-gpu-count",
    "karpenter.k8s.aws/instance-accelerator-name",
    "karpenter.k8s.aws/instance-accelerator-count",
    "karpenter.k8s.aws/instance-cpu",
    "karpenter.k8s.aws/instance-memory",
    "karpenter.k8s.aws/instance-hypervisor",
}


def _karpenter_label_errors(key: str) -> list[str]:
    domain = key.split("/", 1)[0] if "/" in key else ""
    if key == "kubernetes.io/hostname":
        return [f"label {key} is restricted"]
    if domain.endswith("karpenter.sh") and key not in _RESTRICTED_KARPENTER_SH:
        return [f"label domain karpenter.sh is restricted ({key})"]
    if domain.endswith("karpenter.k8s.aws") and key not in _ALLOWED_KARPENTER_AWS:
        return [f"label domain karpenter.k8s.aws is restricted ({key})"]
    return []


def karpenter_rule_errors(obj: dict[str, Any]) -> list[str]:
    """The CRDs' CEL rules (x-kubernetes-validations) that apply to these manifests, in Python."""
    errors: list[str] = []
    spec = obj["spec"]
    if obj["kind"] == "NodePool":
        template = spec["template"]
        for key in (template.get("metadata") or {}).get("labels", {}):
            errors += _karpenter_label_errors(key)
        for requirement in template["spec"]["requirements"]:
            errors += _karpenter_label_errors(requirement["key"])
            values = requirement.get("values", [])
            if requirement["operator"] == "In" and not values:
                errors.append(f"requirement {requirement['key']}: operator In needs values")
            if requirement["operator"] in ("Gt", "Lt", "Gte", "Lte") and not (len(values) == 1 and values[0].isdigit()):
                errors.append(f"requirement {requirement['key']}: needs one non-negative integer")
        for budget in spec.get("disruption", {}).get("budgets", []):
            if ("schedule" in budget) != ("duration" in budget):
                errors.append("budget: 'schedule' must be set with 'duration'")
        if "replicas" in spec and "weight" in spec:
            errors.append("'weight' is not supported on static NodePools")
    elif obj["kind"] == "EC2NodeClass":
        if ("role" in spec) == ("instanceProfile" in spec):
            errors.append("must specify exactly one of ['role', 'instanceProfile']")
        terms = spec["amiSelectorTerms"]
        aliases = [term["alias"] for term in terms if "alias" in term]
        if aliases and len(terms) != 1:
            errors.append("'alias' is mutually exclusive with other amiSelectorTerms")
        for alias in aliases:
            family, _, version = alias.partition("@")
            if not re.fullmatch(r"[a-zA-Z0-9]+@.+", alias):
                errors.append(f"alias {alias!r} must be family@version")
            if family not in ("al2", "al2023", "bottlerocket", "windows2019", "windows2022", "windows2025"):
                errors.append(f"alias family {family!r} is not supported")
        if not aliases and "amiFamily" not in spec:
            errors.append("must specify amiFamily if amiSelectorTerms does not contain an alias")
        for selector in ("subnetSelectorTerms", "securityGroupSelectorTerms"):
            if not spec.get(selector) or not all({"tags", "id", "name"} & set(term) for term in spec[selector]):
                errors.append(f"{selector}: each term needs tags, id or name")
        mappings = spec.get("blockDeviceMappings", [])
        if sum(1 for m in mappings if m.get("rootVolume")) > 1:
            errors.append("must have only one blockDeviceMappings with rootVolume")
        for mapping in mappings:
            ebs = mapping.get("ebs", {})
            if "snapshotID" not in ebs and "volumeSize" not in ebs:
                errors.append(f"{mapping.get('deviceName')}: snapshotID or volumeSize must be defined")
    return errors


def test_karpenter_objects_satisfy_the_crds_cel_rules(deploy: ObjectSet) -> None:
    for obj in deploy.of_kind("NodePool") + deploy.of_kind("EC2NodeClass"):
        assert karpenter_rule_errors(obj) == [], f"{obj['kind']} {obj['metadata']['name']}"


def test_the_cel_rule_checks_reject_what_karpenter_rejects(deploy: ObjectSet) -> None:
    import copy

    pool = copy.deepcopy(deploy.get("NodePool", "inference-inf2"))
    pool["spec"]["template"]["metadata"]["labels"]["karpenter.sh/custom"] = "x"
    pool["spec"]["template"]["spec"]["requirements"].append(
        {"key": "karpenter.k8s.aws/instance-size", "operator": "In"}
    )
    assert len(karpenter_rule_errors(pool)) == 2
    node_class = copy.deepcopy(deploy.of_kind("EC2NodeClass")[0])
    node_class["spec"]["instanceProfile"] = "x"
    node_class["spec"]["amiSelectorTerms"] = [{"alias": "ubuntu@latest"}]
    assert len(karpenter_rule_errors(node_class)) == 2


def test_ec2nodeclasses_use_accelerated_ami_aliases_and_a_large_image_volume(deploy: ObjectSet) -> None:
    families = set()
    for node_class in deploy.of_kind("EC2NodeClass"):
        (term,) = node_class["spec"]["amiSelectorTerms"]
        families.add(term["alias"].split("@")[0])
        (root,) = [m for m in node_class["spec"]["blockDeviceMappings"] if m.get("rootVolume")]
        assert quantity(root["ebs"]["volumeSize"]) >= quantity("100Gi"), node_class["metadata"]["name"]
        assert root["ebs"].get("encrypted") is True
        assert node_class["spec"]["metadataOptions"]["httpTokens"] == "required"
    assert families == {"al2023", "bottlerocket"}


def test_no_site_placeholder_survives_the_entry_point_builds(builds: dict[str, Any]) -> None:
    for name in ("deploy", "deploy/capacity-optimized", "deploy/neuron-compile"):
        text = json.dumps(builds[name].objects)
        for placeholder in ("CLUSTER_NAME", "MODEL_BUCKET", "AWS_REGION_NAME"):
            assert re.search(rf"(?<![A-Z_]){placeholder}(?![A-Z_])", text) is None, f"{name}: {placeholder} left"


# --------------------------------------------------------------------------------------------
# traffic: the InferenceGraph and its weight sets


def test_graph_steps_name_existing_inferenceservices_and_weights_sum_to_100(builds: dict[str, Any]) -> None:
    """In every build that has the graph: the bases, the entry points, both weight sets."""
    checked = []
    for name, objects in builds.items():
        if isinstance(objects, ObjectSet) and objects.get("InferenceGraph", GRAPH, NAMESPACE):
            assert_weights_valid(objects, name)
            checked.append(name)
    assert {"inferenceservices", "deploy", "deploy/capacity-optimized"} <= set(checked)


def test_graph_fronts_every_deployment_unit(deploy: ObjectSet) -> None:
    assert set(graph_weights(deploy)) == set(UNITS)


def test_default_weights_are_the_cost_optimized_set(deploy: ObjectSet, builds: dict[str, Any]) -> None:
    assert graph_weights(deploy) == {**COST_WEIGHTS, "sd21-cpu": 0}
    base = builds["inferenceservices"]
    assert graph_weights(base) == graph_weights(deploy), "the base graph carries the cost-optimized weights"


def test_capacity_optimized_weights_follow_the_adjusted_throughput(deploy_capacity: ObjectSet) -> None:
    """Table 2: adjusted_i = min(mean of the maxima, max_i); weights proportional, largest remainder."""
    maxima = {unit: seed["rpm"] for unit, seed in SEED.items()}
    target = sum(maxima.values()) / len(maxima)
    adjusted = {unit: min(target, value) for unit, value in maxima.items()}
    shares = {unit: 100 * value / sum(adjusted.values()) for unit, value in adjusted.items()}
    weights = {unit: math.floor(share) for unit, share in shares.items()}
    for unit in sorted(shares, key=lambda u: shares[u] - weights[u], reverse=True)[: 100 - sum(weights.values())]:
        weights[unit] += 1
    assert graph_weights(deploy_capacity) == {**weights, "sd21-cpu": 0}


def test_cost_optimized_weights_favour_cheaper_inference(deploy: ObjectSet) -> None:
    weights = graph_weights(deploy)
    cheapest = min(SEED, key=_cost_per_inference)
    assert weights[cheapest] == max(weights.values())
    assert weights["sd21-cpu"] == 0


# --------------------------------------------------------------------------------------------
# autoscaling: Knative KPA


def test_every_unit_scales_with_knative_kpa_in_knative_mode(deploy: ObjectSet) -> None:
    for isvc in isvcs(deploy):
        name = isvc["metadata"]["name"]
        annotations = isvc["metadata"]["annotations"]
        predictor = isvc["spec"]["predictor"]
        assert annotations["serving.kserve.io/deploymentMode"] == "Knative", name
        assert annotations["autoscaling.knative.dev/class"] == "kpa.autoscaling.knative.dev", name
        assert predictor["scaleMetric"] in ("concurrency", "rps"), name
        assert predictor["scaleTarget"] >= 1, name
        assert predictor["containerConcurrency"] >= 1, name
        assert 0 <= predictor["minReplicas"] <= predictor["maxReplicas"], name
        assert 0 < predictor["timeout"] <= KNATIVE_MAX_REVISION_TIMEOUT, name
        assert predictor["model"]["storageUri"].startswith("s3://"), name


def _duration_seconds(text: str) -> float:
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    assert match and text, f"not a duration: {text!r}"
    hours, minutes, seconds = (int(group or 0) for group in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def test_knative_annotations_are_known_and_in_range(deploy: ObjectSet) -> None:
    for obj in isvcs(deploy) + deploy.of_kind("InferenceGraph"):
        name = obj["metadata"]["name"]
        for key, value in obj["metadata"].get("annotations", {}).items():
            if not key.startswith("autoscaling.knative.dev/"):
                continue
            short = key.split("/", 1)[1]
            assert short not in KSERVE_OWNED_ANNOTATIONS, f"{name}: {key} conflicts with KServe's fields"
            assert short in KNATIVE_AUTOSCALING_KEYS, f"{name}: unknown Knative annotation {key}"
            if short == "target-utilization-percentage":
                assert 1 <= float(value) <= 100, f"{name}: {key}={value}"
            if short in ("scale-down-delay", "scale-to-zero-pod-retention-period", "window"):
                assert 0 <= _duration_seconds(value) <= 3600, f"{name}: {key}={value}"
        deadline = obj["metadata"].get("annotations", {}).get("serving.knative.dev/progress-deadline")
        if deadline is not None:
            assert _duration_seconds(deadline) >= 15 * 60, f"{name}: model load needs a long progress deadline"


def test_kpa_targets_follow_the_breaking_point_arithmetic(deploy: ObjectSet) -> None:
    """c = rpm/60 x latency in flight at the break; containerConcurrency = ceil(c); target = 0.8 c."""
    for isvc in isvcs(deploy):
        name = isvc["metadata"]["name"]
        if name not in SEED:
            continue
        annotations = isvc["metadata"]["annotations"]
        assert float(annotations["hw-agnostic-inference/breaking-point-rpm"]) == SEED[name]["rpm"]
        assert float(annotations["hw-agnostic-inference/breaking-point-latency-seconds"]) == SEED[name]["latency"]
        in_flight = SEED[name]["rpm"] / 60 * SEED[name]["latency"]
        predictor = isvc["spec"]["predictor"]
        assert predictor["scaleMetric"] == "concurrency"
        assert predictor["containerConcurrency"] == math.ceil(in_flight), name
        utilization = float(annotations["autoscaling.knative.dev/target-utilization-percentage"])
        effective_target = predictor["scaleTarget"] * utilization / 100
        assert effective_target == pytest.approx(HEADROOM * in_flight, abs=0.006), name
        assert effective_target < in_flight <= predictor["containerConcurrency"], name


def test_units_with_cost_weight_keep_a_warm_replica_and_the_cpu_unit_scales_to_zero(deploy: ObjectSet) -> None:
    weights = graph_weights(deploy)
    for isvc in isvcs(deploy):
        name = isvc["metadata"]["name"]
        minimum = isvc["spec"]["predictor"]["minReplicas"]
        if weights[name] > 0:
            assert minimum >= 1, f"{name} takes cost-optimized traffic: no scale-to-zero by default"
        else:
            assert minimum == 0, f"{name} takes no traffic by default: it should scale to zero"


def test_the_scale_to_zero_component_lets_every_unit_reach_zero(kubectl: str, tmp_path) -> None:
    import os

    import yaml
    from k8slib import kustomize_build

    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(REPO_ROOT / "deploy", overlay)],
                "components": [os.path.relpath(REPO_ROOT / "inferenceservices/components/scale-to-zero", overlay)],
            }
        )
    )
    objects = ObjectSet(kustomize_build(kubectl, overlay))
    assert {isvc["spec"]["predictor"]["minReplicas"] for isvc in isvcs(objects)} == {0}


# --------------------------------------------------------------------------------------------
# the Neuron compile Job feeds the Neuron units


def _expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def test_neuron_compile_job_produces_what_the_neuron_units_load(deploy: ObjectSet, neuron_compile: ObjectSet) -> None:
    from modelbuild.neuron_compile import build_parser as compile_parser

    job = neuron_compile.get("Job", "sd21-neuron-compile", NAMESPACE)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert container["command"] == ["python", "-m", "modelbuild.neuron_compile"]
    try:
        compiled = compile_parser().parse_args([_expand(arg, env) for arg in container["args"]])
    except SystemExit as err:
        raise AssertionError(f"modelbuild.neuron_compile rejects {container['args']}") from err
    neuron_units = [i for i in isvcs(deploy) if accelerator_of(runtime_of(deploy, i)) == "neuron"]
    assert {i["metadata"]["name"] for i in neuron_units} == {"sd21-inf2", "sd21-trn1"}
    for isvc in neuron_units:
        served = parse_predictor_args(predictor_args(deploy, isvc))
        name = isvc["metadata"]["name"]
        assert isvc["spec"]["predictor"]["model"]["storageUri"].rstrip("/") == compiled.s3_uri.rstrip("/"), name
        assert (served.max_height, served.max_width) == (compiled.height, compiled.width), name
        assert (served.default_height, served.default_width) == (compiled.height, compiled.width), name
        assert served.max_batch_size == compiled.batch_size, name
        runtime_image = kserve_container(runtime_of(deploy, isvc))["image"]
        assert container["image"] == runtime_image, "the Job compiles with the serving image's SDK"


def test_neuron_compile_job_runs_on_an_inf2_8xlarge_of_the_inf2_pool(deploy: ObjectSet, neuron_compile) -> None:
    pod = neuron_compile.get("Job", "sd21-neuron-compile", NAMESPACE)["spec"]["template"]["spec"]
    pool = pool_for(deploy, pod, "neuron-compile")
    assert pool_labels(pool)[POOL_LABEL] == {"inf2"}
    instance_type = pod["nodeSelector"]["node.kubernetes.io/instance-type"]
    family, size = instance_type.split(".")
    assert family in family_of(pool) and size in pool_labels(pool)["karpenter.k8s.aws/instance-size"]
    for taint in dig(pool, "spec", "template", "spec", "taints", default=[]):
        assert any(tolerates(t, taint) for t in pod.get("tolerations", []))
    assert pod["restartPolicy"] == "Never"


def test_the_controller_config_describes_the_inferenceservices(deploy: ObjectSet) -> None:
    """examples/controller.yaml: same units, replica bounds, per-minute figures and scale target."""
    from controller.config import load_config

    cfg = load_config(REPO_ROOT / "examples" / "controller.yaml")
    assert cfg.throughput_per == "minute"
    assert cfg.routing.target_utilisation == pytest.approx(HEADROOM)
    by_name = {i["metadata"]["name"]: i for i in isvcs(deploy)}
    for u in cfg.units:
        isvc = by_name[u.name]
        annotations = isvc["metadata"]["annotations"]
        assert float(annotations["hw-agnostic-inference/breaking-point-rpm"]) == u.max_throughput, u.name
        assert float(annotations["hw-agnostic-inference/breaking-point-latency-seconds"]) == u.latency_s, u.name
        assert isvc["spec"]["predictor"]["minReplicas"] == u.min_replicas, u.name
        assert isvc["spec"]["predictor"]["maxReplicas"] == u.max_replicas, u.name


def test_the_serving_entry_points_run_the_traffic_controller_with_the_site_image(deploy: ObjectSet) -> None:
    (deployment,) = [d for d in deploy.of_kind("Deployment") if d["metadata"]["name"] == "inference-traffic-controller"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "hw-agnostic-inference/controller:0.1.0"
    assert deploy.get("ConfigMap", "inference-traffic-controller") is None  # generated: hash-suffixed name
    assert any(c["metadata"]["name"].startswith("inference-traffic-controller-") for c in deploy.of_kind("ConfigMap"))
