"""The sd21 world in the fake API server, an injected clock, and controllers wired to them."""

from __future__ import annotations

from pathlib import Path

from controller.config import parse_config
from controller.kube import Kube, api_client
from controller.loop import build

from .ctl_fakeapi import (
    FakeKube,
    alb_ingress,
    ice_event,
    inference_graph,
    isvc,
    nodeclaim,
    pod,
)

NS = "sd21"
UNITS = {  # name: (pool, price, throughput, latency, nodepool)
    "sd21-inf2": ("cost", 0.7582, 105, 0.67, "inf2"),
    "sd21-trn1": ("capacity", 1.3438, 130, 0.51, "trn1"),
    "sd21-g5-triton": ("capacity", 1.0060, 90, 0.68, "g5"),
    "sd21-g6-triton": ("capacity", 0.8048, 61, 0.96, "g6"),
    "sd21-g5-cuda": ("capacity", 1.0060, 60, 0.92, "g5"),
}
NAMES = list(UNITS)
COST_WEIGHTS = {n: (100 if n == "sd21-inf2" else 0) for n in NAMES}
INTERVAL = 30.0


class Clock:
    """An injected clock: the controller, the lease and the fake objects' timestamps share it."""

    def __init__(self, start: float = 1_790_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def config_dict(**overrides) -> dict:
    data = {
        "namespace": NS,
        "units": [
            {
                "name": n,
                "pool": p,
                "instance_type": "x",
                "price_per_hour": price,
                "max_throughput": tput,
                "latency_s": lat,
                "min_replicas": 1,
                "max_replicas": 10,
                "nodepool": pool,
            }
            for n, (p, price, tput, lat, pool) in UNITS.items()
        ],
        "router": {"kind": "inferencegraph", "name": "sd21-router"},
        "timing": {
            "interval_s": INTERVAL,
            "signal_max_age_s": 120,
            "pending_grace_s": 60,
            "min_state_s": 120,
            "fallback_hold_s": 300,
            "capacity_error_window_s": 300,
            "api_timeout_s": 2,
            "backoff_initial_s": 0.01,
            "backoff_max_s": 0.05,
            "api_retries": 3,
        },
        "prewarm": {"enabled": True, "min_replicas": 2, "hold_s": 120},
        "lease": {"name": "traffic-controller", "duration_s": 15, "renew_s": 5},
        "metrics_port": 0,
        "metrics_host": "127.0.0.1",
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


class World:
    """The sd21 cluster as the fake API server holds it, with verbs for the scenarios."""

    def __init__(self, fake: FakeKube, clock: Clock, kubeconfig: Path) -> None:
        self.fake = fake
        self.clock = clock
        self.kubeconfig = kubeconfig
        self._events = 0
        for n in NAMES:
            fake.put(isvc(n, NS))
            fake.knative_init(NS, n)
        self.graph(COST_WEIGHTS)
        for n in NAMES:
            self.set_unit(n, ready=3 if n == "sd21-inf2" else 1)

    # ---- cluster state
    def graph(self, weights: dict[str, int], cpu: int | None = 0) -> None:
        """sd21-router with a step per unit, plus the sd21-cpu smoke-test step (not a unit)."""
        steps = dict(weights)
        if cpu is not None:
            steps["sd21-cpu"] = cpu
        self.fake.put(inference_graph("sd21-router", NS, steps))

    def ingress(self, weights: dict[str, int], action: str = "weighted-routing") -> None:
        self.fake.put(alb_ingress("sd21-ing", NS, action, weights))

    def set_unit(
        self,
        name: str,
        ready: int,
        desired: int | None = None,
        unschedulable: int = 0,
        unschedulable_for: float = 600.0,
        pending: int = 0,
    ) -> None:
        """Replace the unit's pods: ready ones, plain pending ones, and unschedulable ones."""
        for p in self.fake.list("v1", "Pod", NS):
            if p["metadata"]["labels"].get("serving.kserve.io/inferenceservice") == name:
                self.fake.delete("v1", "Pod", p["metadata"]["name"], NS)
        i = 0
        for _ in range(ready):
            self.fake.put(pod(f"{name}-{i}", NS, name))
            i += 1
        for _ in range(pending):
            self.fake.put(pod(f"{name}-{i}", NS, name, ready=False))
            i += 1
        for _ in range(unschedulable):
            self.fake.put(pod(f"{name}-{i}", NS, name, unschedulable_since=self.clock() - unschedulable_for))
            i += 1
        total = ready + pending + unschedulable
        # Knative's KPA reports the ready pods as actualScale (kpa.go computeStatus).
        self.fake.set_autoscaler(NS, name, desired=total if desired is None else desired, actual=ready)

    def ice(self, nodepool: str, count: int = 1) -> None:
        """Karpenter could not launch nodes for the NodePool: events + failed NodeClaims."""
        for _ in range(count):
            self._events += 1
            self.fake.put(ice_event(f"x{self._events}", nodepool, self.clock()))
            self.fake.put(nodeclaim(f"{nodepool}-c{self._events}", nodepool))

    def clear_ice(self, nodepool: str) -> None:
        for c in self.fake.list("karpenter.sh/v1", "NodeClaim"):
            if c["metadata"]["labels"].get("karpenter.sh/nodepool") == nodepool:
                self.fake.delete("karpenter.sh/v1", "NodeClaim", c["metadata"]["name"])

    def inf2_outage(self) -> None:
        """inf2 wants 6 replicas, gets 2; 4 pods unschedulable for 10 minutes; ICE events."""
        self.set_unit("sd21-inf2", ready=2, desired=6, unschedulable=4)
        self.ice("inf2", 3)

    def inf2_recovered(self, ready: int = 4) -> None:
        self.set_unit("sd21-inf2", ready=ready)
        self.clear_ice("inf2")

    # ---- reading back
    def step_weights(self) -> dict[str, int]:
        g = self.fake.get("serving.kserve.io/v1alpha1", "InferenceGraph", "sd21-router", NS)
        return {s["serviceName"]: s["weight"] for s in g["spec"]["nodes"]["root"]["steps"]}

    def weights(self) -> dict[str, int]:
        """The configured units' weights (the sd21-cpu step left out)."""
        return {k: v for k, v in self.step_weights().items() if k in UNITS}

    def annotations(self) -> dict[str, str]:
        g = self.fake.get("serving.kserve.io/v1alpha1", "InferenceGraph", "sd21-router", NS)
        return g["metadata"].get("annotations") or {}

    def events(self, reason: str | None = None) -> list[dict]:
        evs = [
            e for e in self.fake.list("v1", "Event", NS) if e.get("involvedObject", {}).get("kind") == "InferenceGraph"
        ]
        return [e for e in evs if reason is None or e["reason"] == reason]

    def min_replicas(self, name: str) -> int | None:
        """The replica floor in effect: the KPA's min-scale (see :meth:`floor`)."""
        return self.floor(name)

    def without_knative(self) -> None:
        """KServe raw deployment mode: no Knative resources installed."""
        for api, kind in (
            ("serving.knative.dev/v1", "Revision"),
            ("autoscaling.internal.knative.dev/v1alpha1", "PodAutoscaler"),
            ("apps/v1", "Deployment"),
        ):
            for obj in self.fake.list(api, kind, NS):
                self.fake.delete(api, kind, obj["metadata"]["name"], NS)
        self.fake.missing |= {"revisions", "podautoscalers"}

    def floor(self, name: str) -> int | None:
        """The min-scale the KPA applies to the unit: its routed Revision's PodAutoscaler annotation."""
        pas = [
            pa
            for pa in self.fake.list("autoscaling.internal.knative.dev/v1alpha1", "PodAutoscaler", NS)
            if pa["metadata"]["labels"].get("serving.kserve.io/inferenceservice") == name
            and pa["spec"].get("reachability") != "Unreachable"
        ]
        values = {(pa["metadata"].get("annotations") or {}).get("autoscaling.knative.dev/min-scale") for pa in pas}
        assert len(values) == 1, values
        value = values.pop()
        return None if value is None else int(value)

    def graph_weight_writes(self) -> int:
        return sum(
            1
            for m, path, _, body in self.fake.writes("/inferencegraphs/")
            if m == "PATCH" and isinstance(body, dict) and "spec" in body
        )

    # ---- controllers
    def controller(self, identity: str = "ctl-a", dry_run: bool = False, sleeps: list | None = None, **overrides):
        cfg = parse_config(config_dict(**overrides))
        kube = Kube(api_client(str(self.kubeconfig)), timeout_s=cfg.timing.api_timeout_s)
        sleep = sleeps.append if sleeps is not None else (lambda s: None)
        return build(cfg, kube, identity=identity, dry_run=dry_run, clock=self.clock, sleep=sleep)
