"""One reconcile as a value: what was observed, and the plan of writes that follows from it.

:func:`plan` is pure (no I/O, no clock): given an :class:`Observation`, the policy state and the
config it returns a :class:`Plan` - an outcome, the decision, the state to carry on, and the
writes to make in order. Everything that used to be an early return of the loop is an outcome
here, so each can be specified without a cluster (``tests/controller/test_ctl_reconcile_plan.py``):

=============  ==============================================================================
outcome        when, and the writes
=============  ==============================================================================
unavailable    the signals could not be read: nothing
stale          :func:`controller.policy.decide` calls the signals stale and the weights that
               route around units without a ready replica are the router's already: nothing
standby        the lease expired while the signals were read: nothing (the state is forgotten)
paused         the router carries ``paused: "true"``: only the applied-weights annotation,
               when the person's weights are not recorded yet (they are the base from then on)
paused         the weights differ from what the controller last set (a hand edit): pause
               (annotations only) and a ``ManualEdit`` Event - never overwrite the edit
dry-run        ``--dry-run``: nothing
applied        floors, then the weights with the bookkeeping annotations, then the state
unchanged      ConfigMap when what a restart needs changed, then a Failover/Fallback Event
=============  ==============================================================================

Router annotations are written together with a weight change only (KServe copies an
InferenceGraph's annotations into the router's revision template, so an annotation-only write
rolls out a router revision) - except when there is no state ConfigMap: then they are the only
record of the mode and the applied weights. :class:`controller.actuators.Actuator` executes a
plan's writes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from controller.config import ControllerConfig
from controller.policy import CAPACITY, Decision, PolicyState, Signals, decide, with_weights
from controller.routers import APPLIED, PAUSED, PAUSED_REASON, PREVIOUS, STATE, RouterView, dump_weights
from controller.state import change_key, encode_state, encode_time


@dataclass(frozen=True)
class Observation:
    """What one reconcile saw, in the order it looked."""

    now: float  # after the signals were read (signals that took too long to read are stale too)
    view: RouterView
    signals: Signals | None  # None: they could not be read (signals_error says why)
    signals_error: str = ""
    leader: bool = True  # still the leader once the signals were read
    stored: Mapping | None = None  # change_key of the record the state ConfigMap holds (restored or saved)


@dataclass(frozen=True)
class SetFloors:
    """Replica floors per unit (:class:`controller.floors.FloorActuator`); a failure does not stop the plan."""

    targets: Mapping[str, int]


@dataclass(frozen=True)
class WriteRouter:
    """Weights (None: annotations only) and annotations (None removes one) on the router.

    ``abort_on_conflict``: when the router changed under the write (see
    :meth:`controller.actuators.Actuator.write_router`), drop the rest of the plan and keep the
    state (the decision is taken again next time)."""

    weights: Mapping[str, int] | None
    annotations: Mapping[str, str | None]
    abort_on_conflict: bool = True


@dataclass(frozen=True)
class SaveState:
    """The state record for the state ConfigMap (:mod:`controller.state`); a failure is retried next time."""

    record: Mapping


@dataclass(frozen=True)
class RecordEvent:
    """A core/v1 Event on the router object (best effort)."""

    reason: str
    message: str
    type: str = "Normal"


Write = SetFloors | WriteRouter | SaveState | RecordEvent


@dataclass(frozen=True)
class Plan:
    outcome: str  # unavailable | stale | standby | paused | dry-run | applied | unchanged
    decision: Decision | None
    message: str
    state: PolicyState | None  # the state to carry on once every write landed; None: forget it
    writes: tuple[Write, ...] = ()
    notes: tuple[tuple[int, str], ...] = field(default=())  # (logging level, message) to log


def fmt_weights(weights: Mapping[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in weights.items())


def stored_weights(stored: Mapping | None) -> dict[str, int] | None:
    """The weights recorded in the state ConfigMap, if any."""
    weights = (stored or {}).get("weights")
    return dict(weights) if isinstance(weights, dict) else None


def state_annotation(state: PolicyState) -> str:
    return json.dumps(
        {"mode": state.mode, "since": round(state.since, 3), "prewarm_until": encode_time(state.prewarm_until)},
        separators=(",", ":"),
    )


def plan(
    obs: Observation,
    state: PolicyState,
    config: ControllerConfig,
    *,
    dry_run: bool = False,
    state_configmap: bool = False,
) -> Plan:
    """The writes this observation calls for. ``state`` carries the router's weights already;
    ``state_configmap``: a state ConfigMap keeps the state (else the router's annotations do)."""
    if obs.signals is None:
        msg = f"signals unavailable ({obs.signals_error}); holding weights"
        return Plan("unavailable", None, msg, state, notes=((logging.WARNING, msg),))
    decision = decide(config, state, obs.signals, obs.now)
    view = obs.view
    if decision.stale and decision.weights == view.weights:
        return Plan("stale", decision, decision.reason, state, notes=((logging.WARNING, decision.reason),))
    # Stale signals still take traffic off units without a ready replica: that is written.
    stale_note = ((logging.WARNING, decision.reason),) if decision.stale else ()
    if not obs.leader:
        # Reading took so long that the lease may have passed to another replica: do not write.
        return Plan("standby", decision, "lease expired while reading signals; not acting", None, notes=stale_note)
    # What the controller last set: the router's annotation, else (never written with a weight
    # change yet) the weights in the state ConfigMap.
    applied = view.applied if view.applied is not None else stored_weights(obs.stored)
    if view.paused:
        return _paused(decision, view, applied, dry_run, stale_note)
    if applied is not None and applied != view.weights:
        return _hand_edit(decision, view, applied, obs.now, dry_run, stale_note)
    if dry_run:
        verb = "would set" if decision.weights != view.weights else "would keep"
        msg = f"{verb} {fmt_weights(decision.weights)}: {decision.reason}"
        return Plan("dry-run", decision, msg, decision.state, notes=stale_note)
    return _act(decision, view, applied, obs.stored, state_configmap, stale_note)


def _paused(
    decision: Decision, view: RouterView, applied: dict[str, int] | None, dry_run: bool,
    notes: tuple[tuple[int, str], ...],
) -> Plan:
    """Paused by a person: leave the weights alone; their weights become the base once recorded."""
    writes: tuple[Write, ...] = ()
    if applied != view.weights and not dry_run:
        writes = (WriteRouter(None, {APPLIED: dump_weights(view.weights)}, abort_on_conflict=False),)
    msg = f"paused by annotation {PAUSED}; would set {fmt_weights(decision.weights)} ({decision.reason})"
    return Plan("paused", decision, msg, with_weights(decision.state, view.weights), writes,
                notes + ((logging.INFO, msg),))


def _hand_edit(
    decision: Decision, view: RouterView, applied: dict[str, int], now: float, dry_run: bool,
    notes: tuple[tuple[int, str], ...],
) -> Plan:
    """Weights changed by hand: pause (so the edit is never overwritten) and say so, on the router and in an Event."""
    hand_set_others = view.hand_set_others
    extra = f" and {fmt_weights(hand_set_others)} outside the configured units" if hand_set_others else ""
    msg = (
        f"weights were changed by hand ({fmt_weights(applied)} -> {fmt_weights(view.weights)}{extra}); pausing. "
        f"Remove the annotation {PAUSED} to let the controller manage them again"
    )
    writes: tuple[Write, ...] = ()
    if not dry_run:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        annotations = {
            PAUSED: "true",
            APPLIED: dump_weights(view.weights),
            PAUSED_REASON: f"manual edit of the weights detected at {stamp}",
        }
        writes = (WriteRouter(None, annotations, abort_on_conflict=False), RecordEvent("ManualEdit", msg, "Warning"))
    return Plan("paused", decision, msg, with_weights(decision.state, view.weights), writes,
                notes + ((logging.WARNING, msg),))


def _act(
    decision: Decision, view: RouterView, applied: dict[str, int] | None, stored: Mapping | None,
    state_configmap: bool, notes: tuple[tuple[int, str], ...],
) -> Plan:
    """Floors, weights (with their annotations), the state record, and an Event on a mode switch."""
    writes: list[Write] = []
    if decision.prewarm:
        writes.append(SetFloors(dict(decision.prewarm)))
    hand_set_others = view.hand_set_others
    change = decision.weights != view.weights or bool(hand_set_others)
    if hand_set_others:
        notes += ((logging.WARNING, f"router entries outside the configured units carry weight "
                                    f"({fmt_weights(hand_set_others)}); setting them to 0"),)
    saved = view.saved_state
    bookkeeping = not state_configmap and (
        saved is None or saved.get("mode") != decision.state.mode or applied is None
    )
    if change or bookkeeping:
        annotations: dict[str, str | None] = {
            STATE: state_annotation(decision.state),
            APPLIED: dump_weights(decision.weights),
        }
        if change:
            annotations[PREVIOUS] = dump_weights(view.weights)
        if PAUSED_REASON in view.annotations:
            annotations[PAUSED_REASON] = None
        writes.append(WriteRouter(dict(decision.weights) if change else None, annotations))
    if state_configmap:
        record = encode_state(decision.state, decision.prewarm)
        if change_key(record) != stored:
            writes.append(SaveState(record))
    if decision.switched:
        failover = decision.state.mode == CAPACITY
        writes.append(RecordEvent(
            "Failover" if failover else "Fallback",
            f"{decision.reason}; weights {fmt_weights(decision.weights)}",
            "Warning" if failover else "Normal",
        ))
    return Plan("applied" if change else "unchanged", decision, decision.reason, decision.state, tuple(writes), notes)
