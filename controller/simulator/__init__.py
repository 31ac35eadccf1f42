"""Planner and simulator internals (``python -m controller plan`` / ``simulate``).

* :mod:`.dispatch` - pure arithmetic: merit-order dispatch, blended cost, KPA scaling targets;
* :mod:`.model` - the discrete-time cluster model (router, KPA, capacity, start-up, billing);
* :mod:`.queueing` - latency against the SLO (M/M/c per replica);
* :mod:`.policies` - static, seed-two-state and controller (``controller.policy.decide``);
* :mod:`.oracle` - the hindsight lower bound;
* :mod:`.runner` - run several policies on one trace and summarise;
* :mod:`.plots` - PNG plots (matplotlib, Agg).
"""
