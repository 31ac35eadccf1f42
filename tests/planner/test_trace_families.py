"""Trace families for sweeps (issue 17): what each family draws, per seed, for a config's units."""

from __future__ import annotations

import numpy as np
import pytest

from controller.config import load_config
from controller.traces import FAMILIES, SPOT_NOTICE_S, diurnal, family_trace, main, read_csv, spot_interruptions

from .conftest import REPO

SPOT_CONFIG = REPO / "examples" / "sd21-spot.yaml"


def _windows(col: np.ndarray, t: np.ndarray) -> list[tuple[float, float, float]]:
    """(start, end, cap) of each run of capped steps."""
    capped = ~np.isnan(col)
    out = []
    k = 0
    while k < t.size:
        if capped[k]:
            j = k
            while j + 1 < t.size and capped[j + 1]:
                j += 1
            out.append((t[k], t[j] + (t[1] - t[0]), float(np.nanmax(col[k:j + 1]))))
            k = j + 1
        else:
            k += 1
    return out


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_is_deterministic_per_seed_and_differs_between_seeds(seed_config, family):
    a = family_trace(family, seed_config.units, 3, step_s=60.0)
    b = family_trace(family, seed_config.units, 3, step_s=60.0)
    c = family_trace(family, seed_config.units, 4, step_s=60.0)
    assert np.array_equal(a.demand, b.demand) and a.available.keys() == b.available.keys()
    assert not np.array_equal(a.demand, c.demand)


def test_outages_hit_any_unit_at_any_hour_for_ten_minutes_to_six_hours_partial_or_total(seed_config):
    hit, starts, totals, partials, overlapping = set(), [], 0, 0, 0
    for seed in range(40):
        tr = family_trace("outages", seed_config.units, seed, step_s=60.0)
        assert 1 <= len(tr.available) <= 2
        spans = []
        for name, col in tr.available.items():
            hit.add(name)
            for start, end, cap in _windows(col, tr.time_s):
                spans.append((start, end))
                starts.append(start)
                if end < tr.time_s[-1]:  # not cut off by the end of the day
                    assert 600.0 - 60.0 <= end - start <= 6 * 3600.0 + 60.0
                totals += cap == 0
                partials += cap > 0
        if len(spans) == 2:
            (s1, e1), (s2, e2) = sorted(spans)
            overlapping += s2 < e1
    assert hit == {u.name for u in seed_config.units}
    assert min(starts) < 6 * 3600 and max(starts) > 18 * 3600
    assert totals >= 5 and partials >= 5 and overlapping >= 5


def test_flapping_alternates_between_capped_and_free_phases_of_five_to_thirty_minutes(seed_config):
    tr = family_trace("flapping", seed_config.units, 1, step_s=60.0)
    (name, col), = tr.available.items()
    wins = _windows(col, tr.time_s)
    assert len(wins) >= 3
    for (s, e, _), (s2, _, _) in zip(wins, wins[1:], strict=False):
        assert 240.0 <= e - s <= 1860.0 and 240.0 <= s2 - e <= 1860.0


def test_bursts_are_two_to_five_times_the_load_on_a_noisy_two_day_curve(seed_config):
    tr = family_trace("bursts", seed_config.units, 2, step_s=60.0)
    assert tr.duration_s == pytest.approx(48 * 3600)
    curve = diurnal(48, 60.0, 150.0, 600.0, noise=0.08, seed=2).demand
    ratio = tr.demand / curve
    assert ratio.min() == pytest.approx(1.0, abs=1e-3)
    assert 2.0 <= ratio.max() <= 5.0 * 1.001
    assert (ratio > 1.5).mean() < 0.2  # bursts are minutes long, not the day
    assert tr.available == {}


def test_spot_interrupts_only_spot_units_several_times_a_day_after_a_two_minute_notice():
    cfg = load_config(SPOT_CONFIG)
    spot = {u.name for u in cfg.units if u.capacity_type == "spot"}
    assert spot == {"sd21-g5-triton", "sd21-g6-triton", "sd21-g5-cuda"}
    tr = family_trace("spot", cfg.units, 5, step_s=10.0)
    assert set(tr.available) <= spot
    notices = spot_interruptions(tr)
    assert 3 <= sum(len(v) for v in notices.values()) <= 8
    for name, times in notices.items():
        for at in times:
            k = int(np.searchsorted(tr.time_s, at + SPOT_NOTICE_S))
            assert tr.available_replicas(name, 8)[k] < tr.available_replicas(name, 8)[k - 1]


def test_spot_family_without_spot_units_has_no_capacity_events(seed_config):
    assert family_trace("spot", seed_config.units, 0, step_s=60.0).available == {}


def test_cli_writes_a_family_trace_for_the_example_config_unless_told_otherwise(tmp_path, capsys):
    out = tmp_path / "o.csv"
    assert main(["spot", "--seed", "7", "--step", "60", "--out", str(out)]) == 0  # examples/sd21-spot.yaml
    tr = read_csv(out)
    assert len(tr) == 1440 and set(tr.available) <= {"sd21-g5-triton", "sd21-g6-triton", "sd21-g5-cuda"}
    assert main(["outages", "--config", str(tmp_path / "missing.yaml"), "--out", str(out)]) == 2
    assert "outages draws capacity events for the units of --config" in capsys.readouterr().err
