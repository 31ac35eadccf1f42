"""The Graviton LLM unit (examples/llm/graviton): llama.cpp on c7g/c8g, checked like the sd21 units.

Schema validation of every object comes from test_manifests.py (every kustomization is built and
validated against the vendored CRDs); these tests check what ties the objects together.
"""

from __future__ import annotations

import pytest
import yaml
from conftest import _built
from k8slib import REPO_ROOT, ObjectSet, dig
from test_crossrefs import (
    effective_pod_spec,
    isvcs,
    kserve_container,
    parse_predictor_args,
    predictor_args,
    runtime_of,
    selects,
    tolerates,
)

GRAVITON = "examples/llm/graviton"
CONTROLLER_CONFIG = REPO_ROOT / "examples" / "llm" / "controller-llm.yaml"


@pytest.fixture(scope="module")
def graviton(builds) -> ObjectSet:
    return _built(builds, GRAVITON)


def test_the_unit_runs_the_llama_cpp_backend_with_args_the_predictor_accepts(graviton: ObjectSet) -> None:
    (isvc,) = isvcs(graviton)
    args = parse_predictor_args(predictor_args(graviton, isvc))
    assert (args.backend, args.device, args.task) == ("llama.cpp", "cpu", "text-generation")
    runtime = runtime_of(graviton, isvc)
    assert {f["name"] for f in runtime["spec"]["supportedModelFormats"]} == {
        dig(isvc, "spec", "predictor", "model", "modelFormat", "name")
    }
    assert kserve_container(runtime)["image"].startswith("hw-agnostic-inference/predictor-cpu:")


def test_threads_come_from_a_cpu_limit_equal_to_the_request(graviton: ObjectSet) -> None:
    (isvc,) = isvcs(graviton)
    resources = kserve_container(runtime_of(graviton, isvc))["resources"]
    assert resources["limits"]["cpu"] == resources["requests"]["cpu"]  # cgroup cpu.max = the threads


def test_the_unit_lands_on_graviton_only_and_tolerates_exactly_its_pool(graviton: ObjectSet) -> None:
    (isvc,) = isvcs(graviton)
    (pool,) = graviton.of_kind("NodePool")
    predictor = effective_pod_spec(graviton, isvc)  # the toleration comes from the runtime
    assert "tolerations" not in isvc["spec"]["predictor"]
    assert selects(predictor["nodeSelector"], pool)
    requirements = {r["key"]: r["values"] for r in dig(pool, "spec", "template", "spec", "requirements")}
    assert requirements["kubernetes.io/arch"] == ["arm64"]
    assert set(requirements["karpenter.k8s.aws/instance-family"]) <= {"c7g", "c8g"}
    taints = dig(pool, "spec", "template", "spec", "taints")
    assert all(any(tolerates(t, taint) for t in predictor["tolerations"]) for taint in taints)
    sd21_pools = yaml.safe_load_all((REPO_ROOT / "nodepools" / "nodepool-cpu.yaml").read_text())
    assert not any(selects(predictor["nodeSelector"], p) for p in sd21_pools)  # not the sd21 CPU pool
    node_class = dig(pool, "spec", "template", "spec", "nodeClassRef", "name")
    assert (REPO_ROOT / "nodepools" / "ec2nodeclass-cpu.yaml").read_text().count(f"name: {node_class}") == 1


def test_its_own_scale_target_fits_the_parallel_sequences(graviton: ObjectSet) -> None:
    (isvc,) = isvcs(graviton)
    predictor = isvc["spec"]["predictor"]
    args = parse_predictor_args(predictor_args(graviton, isvc))
    assert predictor["scaleMetric"] == "concurrency"
    assert 0 < predictor["scaleTarget"] < predictor["containerConcurrency"] <= args.max_batch_size


def test_the_controller_unit_matches_the_inferenceservice_and_nodepool(graviton: ObjectSet) -> None:
    (isvc,) = isvcs(graviton)
    (pool,) = graviton.of_kind("NodePool")
    config = yaml.safe_load(CONTROLLER_CONFIG.read_text())
    unit = next(u for u in config["units"] if u["name"] == isvc["metadata"]["name"])
    assert unit["nodepool"] == pool["metadata"]["name"] and config["namespace"] == isvc["metadata"]["namespace"]
    assert (unit["min_replicas"], unit["max_replicas"]) == (
        isvc["spec"]["predictor"]["minReplicas"],
        isvc["spec"]["predictor"]["maxReplicas"],
    )
    families = {r["key"]: r["values"] for r in dig(pool, "spec", "template", "spec", "requirements")}[
        "karpenter.k8s.aws/instance-family"
    ]
    assert unit["instance_type"].split(".")[0] in families
    limits_cpu = int(dig(pool, "spec", "limits", "cpu"))
    assert limits_cpu >= unit["max_replicas"] * 16  # every replica's 4xlarge node fits the pool's limit
