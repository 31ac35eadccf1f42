"""The controller's kustomize base: renders, runs non-root with probes and requests, and its RBAC
allows exactly what the controller does (replayed against the fake API server)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from controller.config import apply_env, load_config, parse_config
from controller.kube import Kube, api_client
from controller.loop import build

from .ctl_fakeapi import ice_event, nodeclaim
from .ctl_world import NS, World

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "controller" / "deploy"
SA = ("inference-traffic-controller", "sd21")


def kubectl() -> str | None:
    for candidate in (os.environ.get("KUBECTL"), shutil.which("kubectl"), str(Path(sys.executable).parent / "kubectl")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def render(path: Path) -> list[dict]:
    exe = kubectl()
    if exe is None:
        pytest.skip("kubectl (with kustomize) not found; set KUBECTL or run .ci/install-kubectl.sh")
    out = subprocess.run([exe, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module")
def docs():
    return render(BASE)


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def test_base_renders_the_expected_objects(docs):
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert [k for k, _ in kinds] == sorted(
        [
            "ServiceAccount",
            "Role",
            "Role",
            "RoleBinding",
            "RoleBinding",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
        ]
    )
    for d in docs:
        assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "hw-agnostic-inference"
        if d["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert d["metadata"]["namespace"] in ("sd21", "default")


def test_deployment_is_non_root_probed_and_sized(docs):
    (dep,) = by_kind(docs, "Deployment")
    spec = dep["spec"]["template"]["spec"]
    assert dep["spec"]["replicas"] >= 2  # the Lease decides who acts
    assert spec["serviceAccountName"] == SA[0]
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    (c,) = spec["containers"]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert c["resources"]["limits"]["memory"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["image"] == "hw-agnostic-inference/controller:0.1.0"
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in c["env"]
    # The args run the controller on the mounted ConfigMap (name with kustomize's hash suffix).
    (cm,) = by_kind(docs, "ConfigMap")
    mount = c["volumeMounts"][0]["mountPath"]
    assert c["args"] == ["run", "--config", f"{mount}/controller.yaml"]
    assert spec["volumes"][0]["configMap"]["name"] == cm["metadata"]["name"]
    assert re.match(r"inference-traffic-controller-[a-z0-9]{10}$", cm["metadata"]["name"])
    # The metrics port is the one the config serves on, and the Service points at it.
    cfg = parse_config(yaml.safe_load(cm["data"]["controller.yaml"]))
    assert c["ports"][0]["containerPort"] == cfg.metrics_port
    (svc,) = by_kind(docs, "Service")
    assert svc["spec"]["ports"][0]["targetPort"] == c["ports"][0]["name"]
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()


def test_configmap_config_matches_the_example_and_the_rbac_names(docs):
    (cm,) = by_kind(docs, "ConfigMap")
    deployed = parse_config(yaml.safe_load(cm["data"]["controller.yaml"]))
    example = load_config(ROOT / "examples" / "controller.yaml")
    assert deployed.units == example.units and deployed.router == example.router
    assert deployed.timing == example.timing and deployed.prewarm == example.prewarm
    (role,) = [r for r in by_kind(docs, "Role") if r["metadata"]["namespace"] == "sd21"]
    names = {tuple(rule["resources"]): rule.get("resourceNames") for rule in role["rules"]}
    assert names[("inferencegraphs",)] == [deployed.router.name]
    assert names[("inferenceservices",)] == [u.name for u in deployed.units]
    # (The Lease must not share the ConfigMap's name: kustomize would rewrite it to the hashed name.)
    assert [n for r in role["rules"] for n in r.get("resourceNames", []) if r["resources"] == ["leases"]] == [
        deployed.lease.name
    ]
    assert deployed.lease.namespace == deployed.router.namespace == "sd21"


def test_no_wildcards_in_rbac(docs):
    for d in by_kind(docs, "Role") + by_kind(docs, "ClusterRole"):
        for rule in d["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], (d["metadata"]["name"], rule)


def test_alb_component_renders(tmp_path):
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(BASE, overlay)],
                "components": [os.path.relpath(BASE / "alb-ingress", overlay)],
            }
        )
    )
    exe = kubectl()
    if exe is None:
        pytest.skip("kubectl not found")
    out = subprocess.run(
        [exe, "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    roles = [d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] == "Role"]
    ingress_rules = [r for role in roles for r in role["rules"] if r["resources"] == ["ingresses"]]
    assert ingress_rules == [
        {
            "apiGroups": ["networking.k8s.io"],
            "resources": ["ingresses"],
            "resourceNames": ["sd21-ing"],
            "verbs": ["get", "patch"],
        }
    ]


# --------------------------------------------------------------------------- RBAC replay

VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def request_attributes(method: str, path: str) -> tuple[str, str, str, str, str]:
    """(apiGroup, resource, namespace, verb, name) of an API request path."""
    parts = path.strip("/").split("/")
    if parts[0] == "api":
        group, rest = "", parts[2:]
    else:
        group, rest = parts[1], parts[3:]
    ns = ""
    if rest[0] == "namespaces":
        ns, rest = rest[1], rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    verb = VERBS[method] if (name or method != "GET") else "list"
    return group, resource, ns, verb, name


def bound_rules(docs) -> list[tuple[str, dict]]:
    """(namespace or '' for cluster-wide, rule) for every rule bound to the controller's SA."""
    roles = {
        (d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]): d
        for d in by_kind(docs, "Role") + by_kind(docs, "ClusterRole")
    }
    out = []
    for b in by_kind(docs, "RoleBinding") + by_kind(docs, "ClusterRoleBinding"):
        if not any(s["kind"] == "ServiceAccount" and (s["name"], s["namespace"]) == SA for s in b["subjects"]):
            continue
        ref = b["roleRef"]
        ns = b["metadata"].get("namespace", "")
        role = roles[(ref["kind"], ns if ref["kind"] == "Role" else "", ref["name"])]
        out += [(ns, rule) for rule in role["rules"]]
    return out


def allowed_by(rules, group, resource, ns, verb, name):
    for i, (rule_ns, rule) in enumerate(rules):
        if rule_ns and rule_ns != ns:
            continue
        if group not in rule["apiGroups"] or resource not in rule["resources"] or verb not in rule["verbs"]:
            continue
        names = rule.get("resourceNames")
        if names and (not name or name not in names):
            continue
        return i
    return None


def replay_failover(docs, world: World, router: dict | None = None) -> None:
    """A failover and a fallback of the deployed config against the fake API server."""
    (cm,) = by_kind(docs, "ConfigMap")
    data = yaml.safe_load(cm["data"]["controller.yaml"])
    data["timing"].update(fallback_hold_s=60, min_state_s=60, capacity_error_window_s=60)
    # The Deployment's Prometheus env applies as in the pod; no Prometheus answers here (refused at
    # once), so the controller runs on the cluster estimate.
    data = apply_env(data, _controller_env(docs))
    data["prometheus"] = {**data["prometheus"], "url": "http://127.0.0.1:9"}
    if router is not None:
        data["router"] = router
    cfg = parse_config(data)
    fake, clock = world.fake, world.clock
    kube = Kube(api_client(str(world.kubeconfig)), timeout_s=5)
    ctl = build(cfg, kube, identity="rbac", clock=clock, sleep=lambda s: None)
    ctl.step()
    world.set_unit("sd21-inf2", ready=2, desired=6, unschedulable=4)
    fake.put(ice_event("a", "inference-inf2", clock()))
    fake.put(ice_event("b", "inference-inf2", clock(), namespace=NS))
    fake.put(nodeclaim("inference-inf2-x", "inference-inf2"))
    clock.advance(30)
    assert ctl.step().decision.switched
    world.inf2_recovered()
    fake.delete("karpenter.sh/v1", "NodeClaim", "inference-inf2-x")
    for _ in range(60):
        clock.advance(30)
        if ctl.step().decision.switched:
            break
    assert ctl.state.mode == "cost-optimized"
    ctl.elector.release()
    # The policy state went to its ConfigMap: read at the first step (absent), created, then patched.
    state_verbs = {
        request_attributes(method, path)[3]
        for method, path, _, _ in fake.requests
        if request_attributes(method, path)[1] == "configmaps"
    }
    assert state_verbs == {"get", "create", "patch"}


def check_requests_against_rbac(docs, fake, rules_that_must_be_used=None) -> None:
    rules = bound_rules(docs)
    used = set()
    for method, path, _, _ in fake.requests:
        attrs = request_attributes(method, path)
        index = allowed_by(rules, *attrs)
        assert index is not None, f"RBAC does not allow {method} {path} {attrs}"
        used.add(index)
    must = rules if rules_that_must_be_used is None else rules_that_must_be_used
    unused = [rules[i] for i in range(len(rules)) if i not in used and rules[i] in must]
    assert unused == [], f"RBAC grants what the controller never used: {unused}"


def test_rbac_allows_exactly_what_a_failover_and_fallback_use(docs, fake, tmp_path):
    from .ctl_world import Clock

    world = World(fake, Clock(), fake.write_kubeconfig(tmp_path / "kc", NS))
    world.fake.delete(
        "autoscaling.internal.knative.dev/v1alpha1", "PodAutoscaler", "sd21-g5-cuda-predictor-00001", NS
    )  # one unit without KPA status: Deployments
    replay_failover(docs, world)
    assert fake.unit_rollouts() == []
    check_requests_against_rbac(docs, fake)


def render_with(component: str, tmp_path: Path) -> list[dict]:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(BASE, overlay)],
                "components": [os.path.relpath(BASE / component, overlay)],
            }
        )
    )
    exe = kubectl()
    if exe is None:
        pytest.skip("kubectl not found")
    out = subprocess.run(
        [exe, "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.mark.parametrize("component", ["knative-pre-1.21", "raw-deployment", "httproute"])
def test_components_grant_what_their_clusters_need(component, tmp_path):
    from .ctl_fakeapi import FakeKube, http_route
    from .ctl_world import COST_WEIGHTS, Clock

    docs = render_with(component, tmp_path)
    own = [
        r
        for d in yaml.safe_load_all((BASE / component / "rbac.yaml").read_text())
        if d and d["kind"] == "Role"
        for r in d["rules"]
    ]
    with FakeKube(knative_version=(1, 21) if component == "httproute" else (1, 15)) as fake:
        world = World(fake, Clock(), fake.write_kubeconfig(tmp_path / "kc", NS))
        router = None
        if component == "raw-deployment":
            world.without_knative()
        if component == "httproute":
            route = yaml.safe_load((ROOT / "deploy" / "httproute" / "httproute.yaml").read_text())
            fake.put(http_route(route["metadata"]["name"], NS, COST_WEIGHTS))
            router = {"kind": "httproute", "name": route["metadata"]["name"]}
        replay_failover(docs, world, router)
        assert fake.unit_rollouts() == []
        check_requests_against_rbac(docs, fake, rules_that_must_be_used=own)


def _controller_env(docs) -> dict[str, str]:
    (dep,) = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "inference-traffic-controller"]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", "") for e in c["env"] if "value" in e}


def _deployed_config(docs, tmp_path):
    (cm,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].startswith("inference-traffic-controller")]
    path = tmp_path / "controller.yaml"
    path.write_text(cm["data"]["controller.yaml"])
    return load_config(path, env=_controller_env(docs))


def test_the_deployed_controller_runs_merit_order_on_the_prometheus_of_the_site_settings(tmp_path):
    """deploy/ (with deploy/settings) ships the strategy the docs advertise, on the site's Prometheus."""
    docs = render(ROOT / "deploy")
    (settings,) = yaml.safe_load_all((ROOT / "deploy" / "settings" / "settings.yaml").read_text())
    cfg = _deployed_config(docs, tmp_path)
    assert cfg.routing.strategy == "merit-order"
    assert cfg.prometheus is not None and cfg.prometheus.url == settings["data"]["prometheusURL"]
    assert cfg.prometheus.query == settings["data"]["prometheusQuery"]
    # The query counts requests entering the router (Knative queue-proxy labels).
    assert "revision_request_count" in cfg.prometheus.query and "$router" in cfg.prometheus.query


def test_the_controller_base_alone_uses_the_config_files_prometheus(docs, tmp_path):
    env = _controller_env(docs)
    assert env["TRAFFIC_CONTROLLER_PROMETHEUS_URL"] == "" and env["TRAFFIC_CONTROLLER_PROMETHEUS_QUERY"] == ""
    cfg = _deployed_config(docs, tmp_path)
    assert cfg.routing.strategy == "merit-order"
    assert cfg.prometheus is not None and cfg.prometheus.url.startswith("http://prometheus-operated.")
