"""Leader election on a coordination.k8s.io Lease, and the real run loop with two replicas."""

from __future__ import annotations

import threading
import time

from controller.config import Lease
from controller.kube import Kube, api_client
from controller.leader import LeaseElector, micro_time
from controller.policy import CAPACITY

from .ctl_world import NS, World

LEASE = Lease(name="ctl", namespace=NS, duration_s=15, renew_s=5)


def electors(world, *identities):
    kube = Kube(api_client(str(world.kubeconfig)), timeout_s=2)
    return [LeaseElector(kube, LEASE, i, world.clock, world.clock) for i in identities]


def lease(world):
    return world.fake.get("coordination.k8s.io/v1", "Lease", "ctl", NS)


def test_first_replica_takes_the_lease_the_second_stands_by(world, clock):
    a, b = electors(world, "a", "b")
    assert a.tick() and a.is_leader
    assert not b.tick() and not b.is_leader and b.holder() == "a"
    spec = lease(world)["spec"]
    assert spec["holderIdentity"] == "a" and spec["leaseDurationSeconds"] == 15
    assert spec["renewTime"] == micro_time(clock()) and spec["renewTime"].endswith("Z")
    assert len(spec["renewTime"].split(".")[1]) == 7  # six fractional digits + Z (MicroTime)
    for _ in range(10):  # renewals keep it
        clock.advance(5)
        assert a.tick() and not b.tick()


def test_takeover_only_after_the_record_stops_changing_for_the_lease_duration(world, clock):
    a, b = electors(world, "a", "b")
    a.tick()
    b.tick()
    # Clock skew does not matter: b measures from when *it* saw the record, not from renewTime.
    world.fake.edit(
        "coordination.k8s.io/v1", "Lease", "ctl", NS, lambda o: o["spec"].update(renewTime=micro_time(clock() - 3600))
    )
    clock.advance(5)
    assert not b.tick()  # the record changed (skewed renewTime): a fresh observation
    clock.advance(14)
    assert not b.tick()
    clock.advance(1)
    assert b.tick() and lease(world)["spec"]["holderIdentity"] == "b"
    assert lease(world)["spec"]["leaseTransitions"] == 1
    assert not a.tick()  # the old leader sees it lost


def test_a_leader_that_cannot_renew_stops_before_anyone_may_take_over(world, clock):
    (a,) = electors(world, "a")
    assert a.tick() and a.api_reachable
    world.fake.fail(r"/leases", status=503, times=100)
    clock.advance(5)
    assert a.tick()  # still within duration - renew_s = 10 s of the last renewal
    clock.advance(5)
    assert not a.tick() and not a.is_leader  # 10 s: stop acting; a standby may take over at 15 s
    assert not a.api_reachable


def test_release_hands_over_at_once(world, clock):
    a, b = electors(world, "a", "b")
    a.tick()
    b.tick()
    a.release()
    assert not a.is_leader
    clock.advance(1)
    assert b.tick()


def test_create_race_has_one_winner(world, clock):
    a, b = electors(world, "a", "b")
    world.fake.fail(r"/leases$", status=409, times=1, method="POST", reason="AlreadyExists")
    assert not b.tick()  # lost the create race
    assert a.tick()


def run_threads(controllers, seconds):
    stops = [threading.Event() for _ in controllers]
    threads = [threading.Thread(target=c.run, args=(s,), daemon=True) for c, s in zip(controllers, stops, strict=True)]
    for t in threads:
        t.start()
    return stops, threads


def wait_until(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


REALTIME = dict(
    timing={
        "interval_s": 0.2,
        "signal_max_age_s": 5,
        "pending_grace_s": 60,
        "min_state_s": 60,
        "fallback_hold_s": 60,
        "api_timeout_s": 2,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.2,
    },
    lease={"name": "traffic-controller", "duration_s": 1.0, "renew_s": 0.25},
)


def test_real_run_loop_fails_over_within_one_interval_and_two_replicas_never_both_act(fake, tmp_path):
    world = World(fake, time.time, fake.write_kubeconfig(tmp_path / "kc", NS))
    a = world.controller(identity="ctl-a", **REALTIME)
    b = world.controller(identity="ctl-b", **REALTIME)
    acted = {"ctl-a": [], "ctl-b": []}
    for name, ctl in (("ctl-a", a), ("ctl-b", b)):
        original = ctl.reconcile

        def recording(original=original, name=name):
            result = original()
            if result.action != "standby":
                acted[name].append(time.monotonic())
            return result

        ctl.reconcile = recording
    stops, threads = run_threads([a, b], 10)
    try:
        assert wait_until(lambda: acted["ctl-a"] or acted["ctl-b"], 5)
        leader, standby = ("ctl-a", "ctl-b") if acted["ctl-a"] else ("ctl-b", "ctl-a")
        time.sleep(0.6)
        assert acted[standby] == []  # only one replica acts
        injected = time.monotonic()
        world.inf2_outage()
        assert wait_until(lambda: world.weights()["sd21-inf2"] < 100, 2)
        assert time.monotonic() - injected < 0.2 + 0.6  # one interval plus the reconcile itself
        # Stop the leader (it releases the lease): the standby takes over and resumes the state.
        handover = time.monotonic()
        stops[0 if leader == "ctl-a" else 1].set()
        assert wait_until(lambda: acted[standby], 3)
        assert acted[standby][0] - handover < 1.0
        survivor = b if leader == "ctl-a" else a
        assert wait_until(lambda: survivor.state is not None and survivor.state.mode == CAPACITY, 2)
        last_leader_action = max(acted[leader])
        assert all(t > last_leader_action for t in acted[standby])  # never both at once
        assert world.fake.non_leader_writes("traffic-controller") == []  # every write by the holder
    finally:
        for s in stops:
            s.set()
        for t in threads:
            t.join(timeout=5)
    assert not any(t.is_alive() for t in threads)
