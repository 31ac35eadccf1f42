"""What the policy reads and returns (signals, state, decision), and the helpers both strategies share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from controller.config import ControllerConfig, Timing

COST = "cost-optimized"
CAPACITY = "capacity-optimized"
Mode = Literal["cost-optimized", "capacity-optimized"]


@dataclass(frozen=True)
class UnitSignals:
    ready_replicas: int
    desired_replicas: int  # what the autoscaler asked for
    pending_replicas: int = 0  # pods not yet running (scheduling, pulling, starting)
    unschedulable_replicas: int = 0  # pending because unschedulable for longer than the grace period
    capacity_errors: int = 0  # InsufficientCapacityError events / failed NodeClaims in the window
    # Pods on nodes that got a spot interruption notice (Karpenter's SpotInterrupted events): they
    # are gone within 2 minutes, so they count as neither ready nor obtainable, and the unit is short.
    interrupting_replicas: int = 0


@dataclass(frozen=True)
class Signals:
    at: float  # epoch seconds when observed
    units: Mapping[str, UnitSignals]
    demand_rps: float | None = None  # total request rate; None = estimate from the autoscaler
    # The demand query returned no series at all (demand_rps is then 0.0). That is zero demand only
    # when nothing serves; while units with weight have ready replicas it is a signal failure (a
    # renamed metric, a Prometheus restart, a scrape that stopped): see measured_demand().
    demand_no_series: bool = False
    demand_error: str | None = None  # why the demand source gave no figure (for the reason)


@dataclass(frozen=True)
class PolicyState:
    mode: Mode
    since: float  # when the current mode was entered
    cost_headroom_since: float | None = None  # start of the current run of cost-pool headroom
    weights: Mapping[str, int] = field(default_factory=dict)  # weights in effect (last applied)
    # Keep capacity units pre-warmed until then; math.inf while the trigger holds (the hold starts
    # at the last decision that saw the trigger).
    prewarm_until: float | None = None
    # Replicas each capacity-short unit is credited with: the fewest ready replicas seen since
    # it became short, so capacity-optimized weights drop fast and rise only once it is not short.
    short_capacity: Mapping[str, float] = field(default_factory=dict)
    # merit-order: replica floors in effect and until when each is held before it may go down
    # (math.inf while the plan still wants it). Hold timers only change when what is wanted
    # changes, so the state that is persisted (controller/state.py) is written on transitions only.
    floors: Mapping[str, tuple[int, float]] = field(default_factory=dict)
    # merit-order: where the last decision planned the demand (config units), the base of the
    # estimate when demand cannot be measured (cluster_demand_estimate).
    planned: Mapping[str, float] = field(default_factory=dict)
    decided_at: float | None = None  # time of the decision that produced this state
    # merit-order: (time, measured demand) of the decisions within prewarm.slope_window_s, oldest
    # first: the base of the demand slope (demand.demand_slope). Estimated demand is not recorded.
    demand_history: tuple[tuple[float, float], ...] = ()
    # merit-order with routing.drop_cost_usd > 0: (time, demand now / least demand one start-up
    # before) of the decisions whose demand rose beyond the scale target's headroom, within
    # routing.spare_memory_s: what standing spare replicas are sized from (policy/spare.py).
    demand_rises: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class Decision:
    state: PolicyState  # the state to carry into the next decision
    weights: dict[str, int]  # weights to apply (always sums to 100)
    switched: bool  # mode changed in this decision
    stale: bool  # signals were stale or incomplete: nothing must be actuated
    reason: str  # one line for logs, status and Events
    prewarm: dict[str, int] = field(default_factory=dict)  # unit -> minReplicas to set (empty: no pre-warm)
    demand_rps: float | None = None  # demand the decision used (measured or estimated)
    planned_rps: dict[str, float] = field(default_factory=dict)  # merit-order: where traffic should be


def initial_state(config: ControllerConfig, now: float) -> PolicyState:
    """Start cost-optimized, with no weights known yet (the loop fills them from the cluster)."""
    return PolicyState(mode=COST, since=now)


def with_weights(state: PolicyState, weights: Mapping[str, int]) -> PolicyState:
    """The same state with the weights actually in effect (after a paused or failed actuation)."""
    return replace(state, weights=dict(weights))


def fmt(x: float) -> str:
    return f"{x:.1f}"


def unit_short(s: UnitSignals) -> bool:
    return s.unschedulable_replicas > 0 or s.capacity_errors > 0 or s.interrupting_replicas > 0


def lasting_ready(s: UnitSignals) -> int:
    """Ready replicas that will still be there in two minutes (not on an interrupted node)."""
    return max(0, s.ready_replicas - s.interrupting_replicas)


def last_decision(state: PolicyState, now: float) -> float:
    return state.decided_at if state.decided_at is not None else now


def headroom_clock(state: PolicyState, headroom: bool, now: float) -> float | None:
    """Start of the current run of cost-pool headroom (None while there is none: any shortage resets it)."""
    if not headroom:
        return None
    return state.cost_headroom_since if state.cost_headroom_since is not None else now


def fallback_due(timing: Timing, state: PolicyState, headroom_since: float | None, now: float) -> tuple[float, bool]:
    """How long the headroom has held, and whether that and the time in state allow a fallback."""
    if headroom_since is None:
        return 0.0, False
    held = now - headroom_since
    return held, held >= timing.fallback_hold_s and now - state.since >= timing.min_state_s
