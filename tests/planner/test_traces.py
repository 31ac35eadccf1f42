"""Trace CSV I/O and the generators."""

from __future__ import annotations

import math

import numpy as np
import pytest

from controller.traces import Trace, TraceError, burst, diurnal, main, outage, read_csv, write_csv


def test_csv_round_trip_keeps_demand_and_availability(tmp_path):
    tr = Trace(np.array([0.0, 10.0, 20.0]), np.array([1.5, 2.25, 0.0]),
               {"sd21-inf2": np.array([np.nan, 4.0, 0.0])})
    path = write_csv(tr, tmp_path / "t.csv")
    assert path.read_text().splitlines()[0] == "time_s,demand,available.sd21-inf2"
    back = read_csv(path)
    assert back.time_s.tolist() == [0.0, 10.0, 20.0]
    assert back.demand.tolist() == [1.5, 2.25, 0.0]
    a = back.available["sd21-inf2"]
    assert math.isnan(a[0]) and a[1:].tolist() == [4.0, 0.0]


def test_missing_or_empty_availability_means_max_replicas():
    tr = Trace(np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 1.0]), {"u": np.array([np.nan, 3.0, 30.0])})
    assert tr.available_replicas("u", 10).tolist() == [10, 3, 10]
    assert tr.available_replicas("other", 7).tolist() == [7, 7, 7]


def test_step_lengths_repeat_the_last_interval():
    tr = Trace(np.array([0.0, 10.0, 30.0]), np.zeros(3))
    assert tr.dt.tolist() == [10.0, 20.0, 20.0]
    assert tr.duration_s == 50.0


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("t,demand\n0,1\n", "header"),
        ("time_s,demand,foo\n0,1,2\n", "unexpected column"),
        ("time_s,demand\n0,1\n0,2\n", "strictly increasing"),
        ("time_s,demand\n0,-1\n", ">= 0"),
        ("time_s,demand\n0,x\n", "could not convert"),
        ("time_s,demand\n0,1,2\n", "expected 2 fields"),
        ("time_s,demand,available.u\n0,1,1.5\n", "whole numbers"),
        ("time_s,demand\n", "no data rows"),
    ],
)
def test_malformed_trace_files_are_rejected_with_a_reason(tmp_path, text, message):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(TraceError, match=message):
        read_csv(p)


def test_availability_for_units_not_in_the_config_is_an_error(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("time_s,demand,available.nope\n0,1,2\n")
    with pytest.raises(TraceError, match="not in the config"):
        read_csv(p, units=["sd21-inf2"])


def test_generators_are_deterministic_per_seed():
    assert np.array_equal(diurnal(hours=2, seed=3).demand, diurnal(hours=2, seed=3).demand)
    assert not np.array_equal(diurnal(hours=2, seed=3).demand, diurnal(hours=2, seed=4).demand)
    assert np.array_equal(burst(hours=2, seed=1).demand, burst(hours=2, seed=1).demand)


def test_diurnal_wave_has_its_trough_and_peak_where_asked():
    tr = diurnal(hours=24, step_s=60, base=100, peak=900, noise=0.0, trough_h=4)
    assert len(tr) == 24 * 60
    assert tr.time_s[np.argmin(tr.demand)] == pytest.approx(4 * 3600)
    assert tr.time_s[np.argmax(tr.demand)] == pytest.approx(16 * 3600)
    assert tr.demand.min() == pytest.approx(100) and tr.demand.max() == pytest.approx(900)


def test_noise_stays_moderate():
    tr = diurnal(hours=24, step_s=10, base=200, peak=800, noise=0.04, seed=0)
    smooth = diurnal(hours=24, step_s=10, base=200, peak=800, noise=0.0)
    rel = tr.demand / smooth.demand - 1
    assert abs(rel.mean()) < 0.05 and rel.std() < 0.08 and (tr.demand >= 0).all()


def test_bursts_multiply_the_wave():
    base = diurnal(hours=24, step_s=10, base=150, peak=600, seed=2)
    b = burst(hours=24, step_s=10, base=150, peak=600, bursts=4, factor=2.5, seed=2)
    ratio = b.demand / base.demand
    assert ratio.min() >= 1.0 - 1e-6
    assert ratio.max() > 1.8
    assert (ratio > 1.05).mean() < 0.5  # bursts are short


def test_outage_limits_only_the_given_units_inside_the_window():
    tr = outage(["sd21-inf2"], hours=24, step_s=60, start_h=7, duration_h=8, replicas=3)
    a = tr.available["sd21-inf2"]
    inside = (tr.time_s >= 7 * 3600) & (tr.time_s < 15 * 3600)
    assert np.all(a[inside] == 3)
    assert np.all(np.isnan(a[~inside]))
    assert set(tr.available) == {"sd21-inf2"}


def test_generator_arguments_are_validated():
    with pytest.raises(TraceError):
        diurnal(base=10, peak=5)
    with pytest.raises(TraceError):
        outage([])
    with pytest.raises(TraceError):
        diurnal(hours=0)


def test_cli_writes_each_kind_of_trace(tmp_path, capsys):
    from .conftest import SEED_CONFIG

    for kind, extra in [("diurnal", []), ("burst", ["--seed", "2"]), ("outage", ["--config", str(SEED_CONFIG)])]:
        out = tmp_path / f"{kind}.csv"
        assert main([kind, "--out", str(out), "--hours", "2", *extra]) == 0
        tr = read_csv(out)
        assert len(tr) == 720
        if kind == "outage":
            assert set(tr.available) == {"sd21-inf2"}  # the seed config's cost pool
    assert "wrote" in capsys.readouterr().out


def test_shipped_example_traces_parse_against_the_seed_config(seed_config):
    from .conftest import REPO

    names = [u.name for u in seed_config.units]
    paths = sorted((REPO / "examples" / "traces").glob("*.csv"))
    assert paths
    total = 0
    for p in paths:
        tr = read_csv(p, units=names)
        assert len(tr) == 1440 and tr.duration_s == 24 * 3600
        total += p.stat().st_size
    assert total < 200_000
