"""The reconcile's plan, as a specification: what one observation makes the controller write.

:func:`controller.reconcile.plan` is pure, so pause, a hand edit, dry-run and stale signals are
specified here without a cluster. The last tests apply a plan through the real client against the
fake API server, to show that a lease lost in the middle drops the writes after it.
"""

from __future__ import annotations

import json

from controller.config import parse_config
from controller.policy import CAPACITY, COST, PolicyState, Signals, UnitSignals
from controller.reconcile import (
    Observation,
    RecordEvent,
    SaveState,
    SetFloors,
    WriteRouter,
    plan,
)
from controller.routers import APPLIED, PAUSED, PAUSED_REASON, PREVIOUS, STATE, RouterView, dump_weights
from controller.state import KEY, change_key, encode_state

from .ctl_world import COST_WEIGHTS, INTERVAL, NAMES, NS, config_dict
from .test_ctl_fencing import LEASE, STATE_CM, on_first, take_lease

CFG = parse_config(config_dict())
NOW = 1_790_000_000.0
INF2, TRN1 = "sd21-inf2", "sd21-trn1"
SPLIT = {INF2: 50, TRN1: 50, "sd21-g5-triton": 0, "sd21-g6-triton": 0, "sd21-g5-cuda": 0}


def healthy(at: float = NOW, **ready: int) -> Signals:
    units = {n: UnitSignals(ready_replicas=ready.get(n, 3 if n == INF2 else 1),
                            desired_replicas=ready.get(n, 3 if n == INF2 else 1)) for n in NAMES}
    return Signals(at=at, units=units)


def outage(at: float = NOW) -> Signals:
    """inf2 wants 6 replicas, gets 2, 4 unschedulable, capacity errors: a failover."""
    units = dict(healthy(at).units)
    units[INF2] = UnitSignals(ready_replicas=2, desired_replicas=6, pending_replicas=4, unschedulable_replicas=4,
                              capacity_errors=3)
    return Signals(at=at, units=units)


def router(weights: dict[str, int], **annotations: str) -> RouterView:
    return RouterView(weights=dict(weights), annotations=dict(annotations), resource_version="7", ref={})


def cost_state(weights: dict[str, int] = COST_WEIGHTS) -> PolicyState:
    return PolicyState(mode=COST, since=NOW - 3600, weights=dict(weights))


def weight_writes(p) -> list[WriteRouter]:
    return [w for w in p.writes if isinstance(w, WriteRouter) and w.weights is not None]


# ---- the ordinary case


def test_a_failover_writes_floors_then_weights_then_the_state_then_an_event():
    view = router(COST_WEIGHTS, **{APPLIED: dump_weights(COST_WEIGHTS)})
    p = plan(Observation(NOW, view, outage()), cost_state(), CFG, state_configmap=True)
    assert p.outcome == "applied" and p.decision.switched and p.state.mode == CAPACITY
    floors, weights, save, event = p.writes
    assert isinstance(floors, SetFloors) and floors.targets == p.decision.prewarm
    assert weights.weights == p.decision.weights and weights.weights[TRN1] > 0 and weights.abort_on_conflict
    assert json.loads(weights.annotations[PREVIOUS]) == COST_WEIGHTS
    assert json.loads(weights.annotations[APPLIED]) == p.decision.weights
    assert save == SaveState(encode_state(p.decision.state, p.decision.prewarm))
    assert event == RecordEvent("Failover", event.message, "Warning") and p.decision.reason in event.message


def test_nothing_to_write_when_nothing_changes():
    view = router(COST_WEIGHTS, **{APPLIED: dump_weights(COST_WEIGHTS)})
    first = plan(Observation(NOW, view, healthy()), cost_state(), CFG, state_configmap=True)
    stored = change_key(first.writes[-1].record)  # the state record, saved once
    again = plan(Observation(NOW + INTERVAL, view, healthy(NOW + INTERVAL), stored=stored), first.state, CFG,
                 state_configmap=True)
    assert again.outcome == "unchanged" and not [w for w in again.writes if not isinstance(w, SetFloors)]


def test_without_a_state_configmap_the_router_annotations_are_the_record():
    view = router(COST_WEIGHTS)  # never written by the controller
    p = plan(Observation(NOW, view, healthy()), cost_state(), CFG, state_configmap=False)
    (write,) = [w for w in p.writes if isinstance(w, WriteRouter)]
    assert write.weights is None and set(write.annotations) == {STATE, APPLIED}  # bookkeeping only
    assert not [w for w in p.writes if isinstance(w, SaveState)]
    # With a state ConfigMap an annotation-only router write (a router rollout) is never planned.
    p = plan(Observation(NOW, view, healthy()), cost_state(), CFG, state_configmap=True)
    assert not [w for w in p.writes if isinstance(w, WriteRouter)]


# ---- pause


def test_paused_router_keeps_the_persons_weights_even_through_a_failover():
    view = router(SPLIT, **{PAUSED: "true", APPLIED: dump_weights(COST_WEIGHTS)})
    p = plan(Observation(NOW, view, outage()), cost_state(SPLIT), CFG, state_configmap=True)
    assert p.outcome == "paused" and p.decision.switched  # it would fail over ...
    assert "would set" in p.message and PAUSED in p.message
    # ... but only records the person's weights as the base: no weights, floors, state or Event.
    assert p.writes == (WriteRouter(None, {APPLIED: dump_weights(SPLIT)}, abort_on_conflict=False),)
    assert dict(p.state.weights) == SPLIT


def test_paused_router_whose_weights_are_recorded_gets_no_write():
    view = router(SPLIT, **{PAUSED: "true", APPLIED: dump_weights(SPLIT)})
    p = plan(Observation(NOW, view, outage()), cost_state(SPLIT), CFG, state_configmap=True)
    assert p.outcome == "paused" and p.writes == ()


# ---- a hand edit is never overwritten


def test_a_hand_edit_pauses_the_controller_and_says_so():
    view = router(SPLIT, **{APPLIED: dump_weights(COST_WEIGHTS)})  # someone moved 50% to trn1
    p = plan(Observation(NOW, view, healthy()), cost_state(SPLIT), CFG, state_configmap=True)
    assert p.outcome == "paused" and "changed by hand" in p.message
    pause, event = p.writes
    assert pause.weights is None and not pause.abort_on_conflict
    assert pause.annotations[PAUSED] == "true" and json.loads(pause.annotations[APPLIED]) == SPLIT
    assert pause.annotations[PAUSED_REASON] == "manual edit of the weights detected at 2026-09-21T14:13:20Z"
    assert event == RecordEvent("ManualEdit", p.message, "Warning")
    assert dict(p.state.weights) == SPLIT


def test_a_hand_edit_is_detected_against_the_state_configmap_too():
    """Never written with a weight change yet: the applied weights are the state ConfigMap's."""
    view = router(SPLIT)
    stored = change_key(encode_state(cost_state()))
    p = plan(Observation(NOW, view, outage(), stored=stored), cost_state(SPLIT), CFG, state_configmap=True)
    assert p.outcome == "paused" and weight_writes(p) == []


def test_no_plan_overwrites_weights_that_differ_from_what_the_controller_last_set():
    """Whatever the signals, a router whose weights are not the applied ones gets no weights."""
    for signals in (healthy(), outage(), healthy(NOW - 3600), healthy(**{INF2: 0})):
        for dry_run in (False, True):
            view = router(SPLIT, **{APPLIED: dump_weights(COST_WEIGHTS)})
            p = plan(Observation(NOW, view, signals), cost_state(SPLIT), CFG, dry_run=dry_run, state_configmap=True)
            assert weight_writes(p) == [], (signals, dry_run, p)


def test_entries_outside_the_units_with_weight_are_a_hand_edit_and_are_named():
    view = RouterView(weights=dict(SPLIT), annotations={APPLIED: dump_weights(COST_WEIGHTS)}, resource_version="7",
                      ref={}, others={"sd21-cpu": 10})
    p = plan(Observation(NOW, view, healthy()), cost_state(SPLIT), CFG)
    assert p.outcome == "paused" and "sd21-cpu=10 outside the configured units" in p.message


# ---- dry-run


def test_dry_run_decides_and_writes_nothing():
    view = router(COST_WEIGHTS, **{APPLIED: dump_weights(COST_WEIGHTS)})
    p = plan(Observation(NOW, view, outage()), cost_state(), CFG, dry_run=True, state_configmap=True)
    assert p.outcome == "dry-run" and p.writes == ()
    assert p.message.startswith("would set ") and p.decision.switched and p.state == p.decision.state
    p = plan(Observation(NOW, view, healthy()), cost_state(), CFG, dry_run=True, state_configmap=True)
    assert p.outcome == "dry-run" and p.message.startswith("would keep ") and p.writes == ()


def test_dry_run_with_a_hand_edit_reports_the_pause_without_writing_it():
    view = router(SPLIT, **{APPLIED: dump_weights(COST_WEIGHTS)})
    p = plan(Observation(NOW, view, healthy()), cost_state(SPLIT), CFG, dry_run=True)
    assert p.outcome == "paused" and p.writes == ()


# ---- stale signals: hold, but route around units without a ready replica


def test_stale_signals_take_traffic_off_a_unit_without_ready_replicas():
    view = router(SPLIT, **{APPLIED: dump_weights(SPLIT)})
    old = healthy(NOW - 3600, **{TRN1: 0})  # an hour old, and trn1 has lost its pods
    p = plan(Observation(NOW, view, old), cost_state(SPLIT), CFG, state_configmap=True)
    assert p.decision.stale and p.outcome == "applied"
    (write,) = weight_writes(p)
    # trn1's share goes to the units with ready replicas, in proportion to their ready capacity
    assert write.weights[TRN1] == 0 and write.weights[INF2] > 50 and sum(write.weights.values()) == 100
    assert not [w for w in p.writes if isinstance(w, SetFloors | RecordEvent)]  # nothing else on old signals
    assert p.state.mode == COST and p.state.since == NOW - 3600


def test_stale_signals_with_nothing_to_route_around_write_nothing():
    view = router(SPLIT, **{APPLIED: dump_weights(SPLIT)})
    state = cost_state(SPLIT)
    p = plan(Observation(NOW, view, healthy(NOW - 3600)), state, CFG, state_configmap=True)
    assert p.outcome == "stale" and p.writes == () and p.state == state


def test_unreadable_signals_hold_everything():
    view = router(COST_WEIGHTS, **{APPLIED: dump_weights(COST_WEIGHTS)})
    state = cost_state()
    p = plan(Observation(NOW, view, None, signals_error="HTTP 503"), state, CFG, state_configmap=True)
    assert p.outcome == "unavailable" and p.writes == () and p.state == state and "HTTP 503" in p.message


def test_a_lease_lost_while_reading_signals_plans_no_write_and_forgets_the_state():
    view = router(COST_WEIGHTS, **{APPLIED: dump_weights(COST_WEIGHTS)})
    p = plan(Observation(NOW, view, outage(), leader=False), cost_state(), CFG, state_configmap=True)
    assert p.outcome == "standby" and p.writes == () and p.state is None


# ---- applying a plan: NotLeader in the middle drops the rest


def state_record(world) -> dict:
    return json.loads(world.fake.get("v1", "ConfigMap", STATE_CM, NS)["data"][KEY])


def test_a_lease_lost_mid_apply_drops_the_writes_after_it(world, clock):
    ctl = world.controller(identity="ctl-a")
    assert ctl.step().action == "unchanged"
    before = state_record(world)
    world.inf2_outage()
    clock.advance(INTERVAL)
    ctl.lease_tick()
    observation = ctl.observe()
    p = plan(observation, ctl.state, ctl.config, state_configmap=True)
    assert [type(w) for w in p.writes] == [SetFloors, WriteRouter, SaveState, RecordEvent]
    # Another replica takes the Lease once the weights landed (at the re-read after the write).
    on_first(world, "GET", "/inferencegraphs/", lambda: take_lease(world, "ctl-z"))
    applied = ctl.actuator.apply(p, observation.view)
    assert applied.outcome == "standby" and applied.dropped == p.writes[2:]
    assert world.weights() == p.decision.weights  # written while it held the Lease
    assert state_record(world) == before and world.events("Failover") == []  # dropped, not sent
    assert world.fake.non_leader_writes(LEASE) == []
    assert ctl.step().action == "standby"  # and it stands by from then on


def test_a_lease_lost_mid_reconcile_forgets_the_state(world, clock):
    ctl = world.controller(identity="ctl-a")
    ctl.step()
    world.inf2_outage()
    clock.advance(INTERVAL)
    on_first(world, "GET", "/revisions", lambda: take_lease(world, "ctl-z"))  # at the floors, before the weights
    result = ctl.step()
    assert result.action == "standby" and "remaining writes dropped" in result.message
    assert ctl.state is None and world.weights() == COST_WEIGHTS
    assert world.fake.non_leader_writes(LEASE) == []
