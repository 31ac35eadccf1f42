"""``python -m bench --parts peer``: ours against KServe's huggingfaceserver (issue 18).

The pure pieces (arguments, the request body both servers accept, reading their answers, ratios
against the goals and their report) are checked directly; the orchestration runs end to end
against a stand-in peer (tests/bench/fake_hf_peer.py, a real HTTP server on loopback started
through ``--peer_python``), so no peer venv is needed. No timing is asserted.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench.__main__ import _parts, build_parser, run
from bench.clients import CLASSIFIER_BODY, v2_text_body
from bench.peer import NO_PEER, PEER_GOALS, ask_both, compare_answers, output_labels, peer_ratios
from bench.report import peer_markdown
from bench.servers import MODEL_NAME
from tests.bench.fake_hf_peer import handler, texts_of

REPO = Path(__file__).resolve().parents[2]
FAKE_PEER = Path(__file__).with_name("fake_hf_peer.py")
ID2LABEL = {"0": "NEGATIVE", "1": "POSITIVE"}
OURS_OUTPUTS = [
    {"name": "labels", "datatype": "BYTES", "shape": [1, 1], "data": ["POSITIVE"]},
    {"name": "scores", "datatype": "FP32", "shape": [1, 1], "data": [0.99]},
]


def peer_outputs(index: int) -> list[dict]:
    return [{"name": "output-0", "datatype": "INT64", "shape": [1], "data": [index]}]


# ----------------------------------------------------------------------------- arguments


def test_peer_is_a_part_and_quick_shrinks_its_counts():
    args = build_parser().parse_args(["--parts", "peer", "--quick"])
    assert _parts(args) == {"peer"}
    assert (args.peer_rounds, args.peer_requests) == (1, 16)
    defaults = build_parser().parse_args([])
    assert "peer" not in _parts(defaults)  # the default run needs no peer venv
    assert (defaults.peer_rounds, defaults.peer_requests, defaults.peer_python) == (2, 400, None)


def test_a_peer_python_that_cannot_run_is_refused_before_any_part_starts(tmp_path):
    not_executable = tmp_path / "python"
    not_executable.write_text("")
    for path in (tmp_path / "missing", not_executable):
        args = build_parser().parse_args(["--parts", "a,peer", "--peer_python", str(path)])
        with pytest.raises(SystemExit, match="is not an executable file"):
            _parts(args)


def test_without_peer_python_the_part_is_skipped_and_says_why(tmp_path):
    argv = ["--parts", "peer", "--device", "cpu", "--out", str(tmp_path)]
    report = run(build_parser().parse_args(argv), argv)
    assert report["peer"] == {"skipped": NO_PEER}
    assert json.loads((tmp_path / "bench.json").read_text())["peer"] == {"skipped": NO_PEER}
    assert f"skipped: {NO_PEER}" in (tmp_path / "bench.md").read_text()


def test_a_process_that_imported_kserve_before_can_still_run_the_bench(tmp_path):
    """The "bench imported kserve" guard is about what the benchmark imports, not its caller (a
    test session whose earlier tests imported kserve)."""
    code = (
        "import sys, kserve; from bench.__main__ import build_parser, run; "
        f"argv = ['--parts', 'peer', '--device', 'cpu', '--out', {str(tmp_path)!r}]; "
        "print(run(build_parser().parse_args(argv), argv)['peer'])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "skipped" in done.stdout


# ----------------------------------------------------------------------------- the request and the answers


def test_the_text_body_is_one_bytes_tensor_of_strings_that_the_peer_reads_as_texts():
    body = json.loads(v2_text_body(["good", "bad"]))
    assert body == {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["good", "bad"]}]}
    assert texts_of(v2_text_body(["good", "bad"])) == ["good", "bad"]
    assert texts_of(CLASSIFIER_BODY) == ["what a lovely day for a benchmark"]
    for bad in ([], [b"bytes"], "a string"):
        with pytest.raises(ValueError, match="non-empty list of strings"):
            v2_text_body(bad)


def test_labels_are_read_from_our_bytes_tensor_and_from_the_peers_class_indices():
    assert output_labels(OURS_OUTPUTS, ID2LABEL) == ["POSITIVE"]
    assert output_labels(peer_outputs(1), ID2LABEL) == ["POSITIVE"]
    assert output_labels(peer_outputs(7), ID2LABEL) == ["7"]  # an index the model does not name stays visible
    assert output_labels([{"name": "x", "datatype": "FP32", "shape": [1], "data": [0.5]}], ID2LABEL) == []


def test_answers_agree_on_the_label_while_their_formats_differ():
    same = compare_answers({"ours": OURS_OUTPUTS, "peer": peer_outputs(1)}, ID2LABEL)
    assert same["same_labels"] is True and same["same_output_shapes"] is False
    assert same["answers"]["peer"] == {"outputs": ["output-0 INT64 [1]"], "labels": ["POSITIVE"]}
    assert same["answers"]["ours"]["outputs"] == ["labels BYTES [1, 1]", "scores FP32 [1, 1]"]
    differ = compare_answers({"ours": OURS_OUTPUTS, "peer": peer_outputs(0)}, ID2LABEL)
    assert differ["same_labels"] is False
    neither = compare_answers({"ours": [], "peer": []}, ID2LABEL)
    assert neither["same_labels"] is False  # no label at all is no agreement


def test_a_body_a_server_refuses_stops_the_part_naming_that_server():
    fake = ThreadingHTTPServer(("127.0.0.1", 0), handler(MODEL_NAME, 1))
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    try:
        peer = SimpleNamespace(http=f"http://127.0.0.1:{fake.server_address[1]}")
        assert ask_both({"peer": peer}, CLASSIFIER_BODY) == {"peer": peer_outputs(1)}
        numbers = json.dumps({"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]})
        with pytest.raises(RuntimeError, match=r"peer refused the v2 request .*HTTP 400"):
            ask_both({"peer": peer}, numbers.encode())
    finally:
        fake.shutdown()
        fake.server_close()


# ----------------------------------------------------------------------------- ratios and report


def _level(concurrency: int, rate: float, cpu: float) -> dict:
    return {"concurrency": concurrency, "requests": 10, "requests_per_s": rate, "p50_ms": 5.0, "p90_ms": 6.0,
            "cpu_ms_per_request": cpu}  # fmt: skip


def test_ratios_are_ours_over_the_peer_against_the_issue_goals():
    levels = {
        "ours": [_level(1, 90.0, 12.0), _level(4, 200.0, 8.0), _level(16, 300.0, 5.0)],
        "peer": [_level(1, 100.0, 10.0), _level(4, 180.0, 10.0), _level(16, 150.0, 0.0)],
    }
    ratios = peer_ratios(levels, PEER_GOALS)
    assert [r["concurrency"] for r in ratios] == [1, 4, 16]
    assert [r["throughput_ratio"] for r in ratios] == [0.9, 1.111, 2.0]
    assert [r["goal_min"] for r in ratios] == [1.0, None, 1.5]
    assert [r["goal_met"] for r in ratios] == [False, None, True]
    assert [r["cpu_per_request_ratio"] for r in ratios] == [1.2, 0.8, None]  # no peer CPU seen: no ratio

    section = {
        "model": "tiny", "rounds": 1, "requests_per_level": 10, "servers": levels, "ratios": ratios,
        **compare_answers({"ours": OURS_OUTPUTS, "peer": peer_outputs(0)}, ID2LABEL),
    }  # fmt: skip
    markdown = "\n".join(peer_markdown(section))
    assert "c=1: ours / peer throughput 0.90 (goal >= 1.0: NOT met); CPU per request 1.20." in markdown
    assert "c=4: ours / peer throughput 1.11; CPU per request 0.80." in markdown
    assert "c=16: ours / peer throughput 2.00 (goal >= 1.5: met); CPU per request -." in markdown
    assert "| peer | 16 | 150.0 | 5.00 | 6.00 | 0.00 |" in markdown
    assert "(labels DIFFER)" in markdown
    assert peer_markdown({"skipped": "why"}) == ["", "(peer) Against KServe's huggingfaceserver: skipped: why."]


# ----------------------------------------------------------------------------- end to end against a stand-in peer


def _refuses_connections(port: str) -> bool:
    try:
        socket.create_connection(("127.0.0.1", int(port)), timeout=2).close()
    except OSError:
        return True
    return False


@pytest.mark.timeout(300)
def test_the_part_measures_ours_against_a_peer_started_from_peer_python(tmp_path):
    wrapper = tmp_path / "peer-python"  # what --peer_python runs as `PYTHON -m huggingfaceserver ...`
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_PEER}" "$@"\n')
    wrapper.chmod(0o755)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FAKE_PEER_CLASS": "1"}
    command = [sys.executable, "-m", "bench", "--parts", "peer", "--quick", "--device", "cpu",
               "--torch_threads", "1", "--peer_python", str(wrapper), "--out", str(out)]  # fmt: skip
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=270)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]

    peer = json.loads((out / "bench.json").read_text())["peer"]
    peer_command = peer["commands"]["peer"]
    assert peer_command[:2] == ["-m", "huggingfaceserver"]
    assert peer_command[peer_command.index("--task") + 1] == "sequence_classification"
    assert peer["request"] == json.loads(CLASSIFIER_BODY)
    assert peer["answers"]["peer"] == {"outputs": ["output-0 INT64 [1]"], "labels": ["POSITIVE"]}
    assert peer["same_labels"] == (peer["answers"]["ours"]["labels"] == ["POSITIVE"])
    assert peer["answers"]["ours"]["labels"] in (["POSITIVE"], ["NEGATIVE"])
    for key in ("ours", "peer"):
        levels = peer["servers"][key]
        assert [level["concurrency"] for level in levels] == [1, 4, 16]
        for level in levels:
            assert level["requests"] == peer["requests_per_level"] == 16
            assert all(math.isfinite(level[k]) and level[k] > 0 for k in ("requests_per_s", "p50_ms", "p90_ms"))
            assert level["cpu_ms_per_request"] >= 0
    assert [r["goal_min"] for r in peer["ratios"]] == [1.0, None, 1.5]
    assert all(r["throughput_ratio"] > 0 and isinstance(r["goal_met"], bool | None) for r in peer["ratios"])
    assert "(peer) Ours (default flags) against KServe's huggingfaceserver" in (out / "bench.md").read_text()
    assert "peer answers output-0 INT64 [1]: labels ['POSITIVE']" in completed.stdout

    for args in peer["commands"].values():  # both servers were stopped
        assert _refuses_connections(args[args.index("--http_port") + 1])
