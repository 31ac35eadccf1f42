"""Only the leader writes.

The fake API server audits every write: who sent it (the controller's User-Agent carries its
identity) and who held the Lease at that moment. ``fake.non_leader_writes(lease)`` lists the
controller writes (other than to the Lease) that the holder did not send.
"""

from __future__ import annotations

import json
import random
import threading
import time

from controller.config import Lease
from controller.kube import Kube, api_client
from controller.leader import LeaseElector, micro_time
from controller.policy import COST
from controller.state import KEY

from .ctl_world import INTERVAL, NS, World

LEASE = "traffic-controller"
STATE_CM = "inference-traffic-controller-state"


def take_lease(world: World, holder: str) -> None:
    """Another replica holds the Lease, with a fresh renewTime."""
    world.fake.edit(
        "coordination.k8s.io/v1",
        "Lease",
        LEASE,
        NS,
        lambda o: o["spec"].update(holderIdentity=holder, renewTime=micro_time(world.clock())),
    )


def on_first(world: World, method: str, path_part: str, action) -> None:
    """Run action once, when the first matching request reaches the API server."""
    done = []

    def hook(m: str, path: str) -> None:
        if not done and m == method and path_part in path:
            done.append(True)
            action()

    world.fake.on_request.append(hook)


def test_a_lease_taken_mid_reconcile_stops_every_write_of_the_old_leader(world, clock):
    ctl = world.controller(identity="ctl-a")
    assert ctl.step().action == "unchanged"
    world.inf2_outage()  # the next reconcile wants to fail over: router, floors, an Event
    clock.advance(INTERVAL)
    taken_at = []

    def takeover() -> None:
        take_lease(world, "ctl-z")
        taken_at.append(len(world.fake.audit))

    on_first(world, "GET", "/pods", takeover)  # while reading signals
    result = ctl.step()
    assert result.action == "standby", result
    assert world.fake.non_leader_writes(LEASE) == []
    assert world.weights()["sd21-inf2"] == 100  # nothing was written
    # The other holder keeps renewing: the old leader writes nothing, not even to the Lease.
    for _ in range(10):
        clock.advance(5)
        take_lease(world, "ctl-z")
        assert ctl.step().action == "standby"
    assert [w for w in world.fake.audit[taken_at[0] :] if w.agent == "ctl-a"] == []
    # When the other holder stops renewing, the old leader only tries to re-acquire the Lease.
    clock.advance(5)
    ctl.lease_tick()
    clock.advance(16)
    assert ctl.lease_tick()
    assert {w.path for w in world.fake.audit[taken_at[0] :] if w.agent == "ctl-a"} == {
        f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/{LEASE}"
    }


def test_a_write_after_the_lease_expired_locally_is_dropped(world, clock):
    """A reconcile that outlives the lease (slow floors here) drops its remaining writes."""
    ctl = world.controller(identity="ctl-a")
    ctl.step()
    world.inf2_outage()
    clock.advance(INTERVAL)
    on_first(world, "GET", "/revisions", lambda: clock.advance(60))  # the lease runs out
    before = len(world.fake.writes_by("ctl-a", exclude="/leases/"))
    result = ctl.step()
    assert result.action == "standby", result
    assert world.fake.writes_by("ctl-a", exclude="/leases/")[before:] == []
    assert world.weights()["sd21-inf2"] == 100
    assert world.fake.non_leader_writes(LEASE) == []


def test_expiry_is_measured_on_the_monotonic_clock_and_renew_time_is_wall_clock(world):
    kube = Kube(api_client(str(world.kubeconfig)), timeout_s=2)
    mono = [100.0]
    wall = [1_790_000_000.0]
    a = LeaseElector(
        kube, Lease(name="ctl", namespace=NS, duration_s=15, renew_s=5), "a", lambda: mono[0], lambda: wall[0]
    )
    assert a.tick()
    wall[0] += 3600  # NTP steps the wall clock an hour ahead
    assert a.is_leader  # expiry does not follow the wall clock
    wall[0] -= 7200
    assert a.is_leader
    mono[0] += 4
    assert a.tick()
    spec = world.fake.get("coordination.k8s.io/v1", "Lease", "ctl", NS)["spec"]
    assert spec["renewTime"] == micro_time(wall[0])  # what other replicas and kubectl read
    mono[0] += 10
    assert not a.is_leader  # duration - renew after the last renewal, on the monotonic clock


def test_renewal_keeps_the_lease_during_a_slow_reconcile(fake, tmp_path):
    """The Lease is renewed on its own thread: a reconcile slower than the lease keeps it."""
    from .test_ctl_leader import REALTIME

    world = World(fake, time.time, fake.write_kubeconfig(tmp_path / "kc", NS))
    lease = {"name": "traffic-controller", "duration_s": 3.0, "renew_s": 0.25}
    timing = {**REALTIME["timing"], "api_timeout_s": 6}  # the slow read below completes
    a = world.controller(identity="ctl-a", lease=lease, timing=timing)
    b = world.controller(identity="ctl-b", lease=lease, timing=timing)
    stop = threading.Event()
    ta = threading.Thread(target=a.run, args=(stop,), daemon=True)
    ta.start()
    try:
        deadline = time.monotonic() + 5
        while not (a.elector.is_leader and a.last_result is not None) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert a.elector.is_leader
        fake.fail(r"/pods$", status=0, times=1, method="GET", delay_s=4.0)  # a read slower than the lease
        tb = threading.Thread(target=b.run, args=(stop,), daemon=True)
        tb.start()
        time.sleep(5.0)
        assert (
            world.fake.get("coordination.k8s.io/v1", "Lease", "traffic-controller", NS)["spec"]["holderIdentity"]
            == "ctl-a"
        )
        assert b.elector.transitions == 0  # the standby never took over
        assert world.fake.non_leader_writes(LEASE) == []
    finally:
        stop.set()
        ta.join(timeout=5)


def test_two_replicas_under_api_chaos_never_both_write_and_never_roll_out(world, clock):
    """5xx, 409 and timeouts on every write, the Lease taken and given back, an outage and a
    recovery: only the Lease holder ever writes, no unit is rolled out, weights stay valid."""
    rng = random.Random(12)
    a = world.controller(identity="ctl-a", timing={"api_timeout_s": 0.3})
    b = world.controller(identity="ctl-b", timing={"api_timeout_s": 0.3})
    grabs = []

    def third_party(method: str, path: str) -> None:
        # Grabs the Lease between any two requests of a reconcile (not during a write in flight:
        # that one-request window is the limit of client-side fencing, docs/controller.md).
        if method == "GET" and "/leases" not in path and rng.random() < 0.03:
            grabs.append(path)
            take_lease(world, "ctl-z")

    world.fake.on_request.append(third_party)
    for step in range(80):
        if step == 10:
            world.inf2_outage()
        if step == 45:
            world.inf2_recovered()
        world.fake.clear_faults()
        for method in ("PATCH", "POST", "PUT"):
            if rng.random() < 0.5:
                status = rng.choice([500, 503, 409, 429])
                world.fake.fail(r".", status=status, times=rng.randint(1, 4), method=method, reason="Chaos")
        if rng.random() < 0.08:  # a client-side timeout; the server still applies the write late
            method = rng.choice(["PATCH", "POST", "PUT"])
            world.fake.fail(r".", status=0, times=1, method=method, delay_s=0.5)
        clock.advance(rng.choice([2, 5, 10, 30]))
        for ctl in rng.sample([a, b], 2):
            try:
                ctl.step()
            except Exception:  # a failed reconcile is the run loop's to back off from
                pass
        assert sum(world.step_weights().values()) == 100
    assert world.fake.non_leader_writes(LEASE) == []
    assert world.fake.unit_rollouts() == []
    assert world.fake.writes_by("ctl-a") and world.fake.writes_by("ctl-b")  # both led at times
    assert [w for w in world.fake.audit if "/configmaps" in w.path]  # the audit covers the state saves
    assert len(grabs) > 10


def test_the_old_leader_does_not_save_its_state_after_losing_the_lease(world, clock):
    """The state ConfigMap is a write like any other: fenced. The Lease is taken right after the
    router write of a failover, before the state is saved: the ConfigMap keeps the last state its
    leader saved, so the new leader resumes from that (and re-decides the failover itself)."""
    ctl = world.controller(identity="ctl-a")
    assert ctl.step().action == "unchanged"
    saved = world.fake.get("v1", "ConfigMap", STATE_CM, NS)["data"][KEY]
    assert json.loads(saved)["mode"] == COST
    world.inf2_outage()
    clock.advance(INTERVAL)
    router_written = []

    def after_router_write(method: str, path: str) -> None:
        if method == "PATCH" and "/inferencegraphs/" in path:
            router_written.append(path)
        elif len(router_written) == 1:  # the request right after the router write is answered
            router_written.append(path)
            take_lease(world, "ctl-z")

    world.fake.on_request.append(after_router_write)
    result = ctl.step()
    assert result.action == "standby", result
    assert router_written and world.weights()["sd21-inf2"] < 100  # the failover reached the router
    assert world.fake.non_leader_writes(LEASE) == []
    assert world.fake.get("v1", "ConfigMap", STATE_CM, NS)["data"][KEY] == saved  # not overwritten
    assert world.events("Failover") == []  # the remaining writes were dropped
