"""Pods and autoscaler of one unit in the simulator (steps 2 and 5 of :mod:`.model`)."""

from __future__ import annotations

import math
from collections import deque

from controller.simulator.data import ClusterSettings, KpaSettings, SimUnit, UnitObservation


class UnitState:
    """Pods and autoscaler of one unit. Times are simulation seconds."""

    __slots__ = ("u", "kpa", "target", "ready", "starting", "blocked", "desired", "floor", "panic_since",
                 "win", "win_sum", "win_dt", "ice_events", "last_ice", "ice_retry_s")

    def __init__(self, u: SimUnit, kpa: KpaSettings, ice_retry_s: float = 60.0) -> None:
        self.u = u
        self.kpa = kpa
        self.ice_retry_s = ice_retry_s
        self.target = kpa.target_utilisation * u.max_throughput  # rps per replica
        self.ready = 0
        self.starting: deque[float] = deque()  # ready-at times, ascending
        self.blocked: deque[float] = deque()  # blocked-since times; scheduled from the left (evicted pods first)
        self.desired = 0
        self.floor = max(u.min_replicas, 0 if kpa.scale_to_zero else 1)
        self.panic_since: float | None = None
        self.win: deque[tuple[float, float, float]] = deque()  # (t, rps*dt, dt)
        self.win_sum = 0.0
        self.win_dt = 0.0
        self.ice_events: deque[float] = deque()
        self.last_ice = -math.inf

    # -- pods
    @property
    def scheduled(self) -> int:
        return self.ready + len(self.starting)

    def warm_start(self, t: float, rps: float, avail: int) -> None:
        n = math.ceil(rps / self.target - 1e-9) if rps > 0 else 0
        self.desired = min(max(n, self.floor), self.u.max_replicas)
        self.ready = min(self.desired, avail)
        self.blocked.extend([t] * (self.desired - self.ready))
        self.win.append((t - self.kpa.stable_window_s, rps * self.kpa.stable_window_s, self.kpa.stable_window_s))
        self.win_sum = rps * self.kpa.stable_window_s
        self.win_dt = self.kpa.stable_window_s

    def reconcile(self, t: float, avail: int) -> None:
        want = min(max(self.desired, self.floor), self.u.max_replicas)
        total = self.scheduled + len(self.blocked)
        if want > total:
            self.blocked.extend([t] * (want - total))
        elif want < total:
            extra = total - want
            while extra and self.blocked:
                self.blocked.pop()
                extra -= 1
            while extra and self.starting:
                self.starting.pop()
                extra -= 1
            if extra:
                self.ready -= extra
        # capacity lost: newest pods go first and come back as blocked pods
        lost = self.scheduled - avail
        if lost > 0:
            for _ in range(lost):
                if self.starting:
                    self.starting.pop()
                else:
                    self.ready -= 1
                self.blocked.appendleft(t)
        # capacity free: schedule the oldest blocked pods
        free = avail - self.scheduled
        ready_at = t + self.u.startup_s
        while free > 0 and self.blocked:
            self.blocked.popleft()
            self.starting.append(ready_at)
            free -= 1
        if self.blocked and t - self.last_ice >= self.ice_retry_s:
            self.ice_events.append(t)
            self.last_ice = t
        # promote pods that finished starting
        while self.starting and self.starting[0] <= t:
            self.starting.popleft()
            self.ready += 1

    # -- autoscaler
    def autoscale(self, t: float, rps: float, dt: float) -> None:
        kpa = self.kpa
        self.win.append((t, rps * dt, dt))
        self.win_sum += rps * dt
        self.win_dt += dt
        horizon = t + dt - kpa.stable_window_s
        while len(self.win) > 1 and self.win[0][0] + self.win[0][2] <= horizon + 1e-9:
            _, s, d = self.win.popleft()
            self.win_sum -= s
            self.win_dt -= d
        stable = max(self.win_sum / self.win_dt, 0.0) if self.win_dt > 0 else 0.0
        panic = rps  # the panic window (6 s) is shorter than a step
        want_stable = math.ceil(stable / self.target - 1e-9) if stable > 1e-12 else 0
        want_panic = math.ceil(panic / self.target - 1e-9) if panic > 1e-12 else 0
        # Knative: panic while the panic-window load needs panic_threshold x the ready pods; stay in
        # panic until a whole stable window has passed without that.
        if panic / self.target / max(1, self.ready) >= kpa.panic_threshold:
            self.panic_since = t
        elif self.panic_since is not None and t - self.panic_since >= kpa.stable_window_s:
            self.panic_since = None
        if self.panic_since is not None:
            want = max(want_panic, want_stable, self.desired)  # never scale down in panic
        else:
            want = max(want_stable, math.floor(self.ready / kpa.max_scale_down_rate))
        if not kpa.scale_to_zero:
            want = max(want, 1)
        self.desired = min(want, self.u.max_replicas)

    def observe(self, t: float, cluster: ClusterSettings, avail_ahead: int | None = None) -> UnitObservation:
        """The unit's signals; ``avail_ahead`` (spot units) is the least capacity the cloud leaves it
        within the notice: pods above it have got their interruption notice (newest first)."""
        while self.ice_events and self.ice_events[0] <= t - cluster.capacity_error_window_s:
            self.ice_events.popleft()
        grace = cluster.pending_grace_s
        unsched = sum(1 for since in self.blocked if t - since > grace)
        # a starting pod is Pending until pending_s after it was scheduled, then Running (not Ready)
        still_pending = t + self.u.startup_s - cluster.pending_s
        pending = sum(1 for ready_at in self.starting if ready_at > still_pending)
        return UnitObservation(
            ready=self.ready,
            desired=min(max(self.desired, self.floor), self.u.max_replicas),
            pending=len(self.blocked) + pending,
            unschedulable=unsched,
            capacity_errors=len(self.ice_events),
            interrupting=max(0, self.scheduled - avail_ahead) if avail_ahead is not None else 0,
        )
