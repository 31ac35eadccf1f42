"""Routing policies replayed by the simulator.

* :class:`StaticPolicy` - fixed weights, never changed.
* :class:`SeedTwoStatePolicy` - a re-implementation of the seed's two-state controller from its
  description: poll every 300 s; if the cost pool shows pods it cannot schedule, apply the
  capacity-optimized weights (seed Table 2 proportions), otherwise the cost-optimized weights;
  switch immediately, no hysteresis, no memory.
* :class:`ControllerPolicy` - our controller: every ``timing.interval_s`` it turns the simulated
  cluster into :class:`controller.policy.Signals` and calls :func:`controller.policy.decide`, the
  very function the live controller calls. The function is looked up on the module at each call,
  so what runs here is always what ``python -m controller run`` runs.

The oracle is not a policy (it needs hindsight); see :mod:`controller.simulator.oracle`.
"""

from __future__ import annotations

from collections.abc import Mapping

from controller import policy as core_policy
from controller.config import ControllerConfig
from controller.simulator.model import Action, Observation
from controller.weights import capacity_optimized_weights, cost_optimized_weights, valid_weights

SEED_POLL_S = 300.0


class StaticPolicy:
    """Fixed weights (e.g. the planner's cost-optimized weights, or the seed's 40/20/15/15/10)."""

    def __init__(self, weights: Mapping[str, int], name: str = "static", interval_s: float = 3600.0) -> None:
        if sum(weights.values()) <= 0:
            raise ValueError("static weights must have a positive sum")
        self.name = name
        self.interval_s = interval_s
        self.weights = dict(weights)

    def initial_weights(self) -> dict[str, int]:
        return dict(self.weights)

    def decide(self, obs: Observation) -> Action:
        return Action(weights=self.weights, mode="static")


class SeedTwoStatePolicy:
    """The seed's controller, re-implemented: 300 s polling, immediate switch, no hysteresis."""

    name = "seed-two-state"

    def __init__(self, config: ControllerConfig, interval_s: float = SEED_POLL_S) -> None:
        self.config = config
        self.interval_s = interval_s
        self.cost_weights = cost_optimized_weights(config.units)
        self.capacity_weights = capacity_optimized_weights(config.units)
        self.mode = core_policy.COST

    def initial_weights(self) -> dict[str, int]:
        return dict(self.cost_weights)

    def decide(self, obs: Observation) -> Action:
        short = any(obs.units[u.name].unschedulable > 0 for u in self.config.cost_units)
        mode = core_policy.CAPACITY if short else core_policy.COST
        switched = mode != self.mode
        self.mode = mode
        weights = self.capacity_weights if mode == core_policy.CAPACITY else self.cost_weights
        reason = "cost pool has unschedulable pods" if short else "cost pool schedules all its pods"
        return Action(weights=weights, mode=mode, switched=switched, reason=reason)


def signals_from(obs: Observation, demand_measured: bool) -> core_policy.Signals:
    """The live controller's signals, read from the simulated cluster."""
    return core_policy.Signals(
        at=obs.now,
        units={
            name: core_policy.UnitSignals(
                ready_replicas=o.ready,
                desired_replicas=o.desired,
                pending_replicas=o.pending,
                unschedulable_replicas=o.unschedulable,
                capacity_errors=o.capacity_errors,
                interrupting_replicas=o.interrupting,
            )
            for name, o in obs.units.items()
        },
        demand_rps=obs.demand_rps if demand_measured else None,
    )


class ControllerPolicy:
    """Our controller: :func:`controller.policy.decide` on simulated signals.

    Demand is passed to ``decide`` only when the config has a Prometheus section (as in the live
    controller); otherwise ``decide`` estimates it from the autoscaler, as it does live.
    Pre-warm floors from the decision become the units' replica floors (``minReplicas``).
    """

    name = "controller"

    def __init__(self, config: ControllerConfig, demand_measured: bool | None = None) -> None:
        self.config = config
        self.interval_s = float(config.timing.interval_s)
        self.demand_measured = config.prometheus is not None if demand_measured is None else demand_measured
        self.state: core_policy.PolicyState | None = None
        self.decisions = 0

    @staticmethod
    def decide_function():
        """The function this policy calls (the live controller's)."""
        return core_policy.decide

    def initial_weights(self) -> dict[str, int]:
        return cost_optimized_weights(self.config.units)

    def decide(self, obs: Observation) -> Action:
        if self.state is None:
            self.state = core_policy.with_weights(core_policy.initial_state(self.config, obs.now),
                                                  self.initial_weights())
        signals = signals_from(obs, self.demand_measured)
        decision = core_policy.decide(self.config, self.state, signals, obs.now)
        self.decisions += 1
        names = [u.name for u in self.config.units]
        if decision.stale or not valid_weights(decision.weights, names):
            # The live loop actuates nothing on stale signals; keep what is in effect.
            return Action(weights=dict(self.state.weights), mode=self.state.mode, reason=decision.reason)
        self.state = decision.state
        return Action(
            weights=decision.weights,
            floors=dict(decision.prewarm) if decision.prewarm else None,
            mode=decision.state.mode,
            switched=decision.switched,
            reason=decision.reason,
        )
