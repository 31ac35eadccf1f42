"""The shared server harness (tests/servers.py): what a test author sees when a server does not
come up, and that every server it started is gone afterwards."""

from __future__ import annotations

import socket
import sys
from http.server import BaseHTTPRequestHandler

import pytest
import requests

from tests.servers import ServerNotReady, ThreadedHTTPServer, free_port, start_predictor, start_process

PY = sys.executable


def python(code: str) -> list[str]:
    return [PY, "-c", code]


def test_a_server_that_exits_names_its_exit_code_and_shows_its_log_tail(tmp_path):
    server = start_process(
        python("print('port already taken', flush=True); raise SystemExit(3)"), tmp_path / "s.log", name="fake server"
    )
    with pytest.raises(ServerNotReady) as failure:
        server.wait_until(lambda: False, "ready", timeout=30)
    message = str(failure.value)
    assert message.startswith("fake server ready: exited with 3")
    assert "port already taken" in message and str(tmp_path / "s.log") in message


def test_a_server_not_ready_by_the_deadline_is_killed_and_shows_the_end_of_a_long_log(tmp_path):
    code = "import time\nfor i in range(2000): print(f'line {i}', flush=True)\ntime.sleep(60)"
    with start_process(python(code), tmp_path / "s.log", name="slow") as server:
        server.wait_until(lambda: "line 1999" in server.logs(), "all lines logged", timeout=30)
        with pytest.raises(ServerNotReady) as failure:
            server.wait_http(f"http://127.0.0.1:{free_port()}/ready", timeout=0.5)
        assert server.process.returncode == -9  # killed at once: a server that never came up is useless
    message = str(failure.value)
    assert "slow GET http://127.0.0.1:" in message and "not after 0.5s" in message
    assert message.endswith("line 1999\n") and "line 0\n" not in message  # the tail, not the whole log


def test_wait_http_returns_once_the_server_answers(tmp_path):
    port = free_port()
    command = [PY, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)]
    with start_process(command, tmp_path / "http.log") as server:
        server.wait_http(f"http://127.0.0.1:{port}/", timeout=60)
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
    assert server.process.poll() is not None  # stopped on leaving the block


def test_stop_sends_sigterm_and_kills_what_ignores_it(tmp_path):
    polite = start_process(python("import signal, time\nprint('up', flush=True)\ntime.sleep(60)"), tmp_path / "a.log")
    stubborn_code = (
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('up', flush=True)\ntime.sleep(60)"
    )
    stubborn = start_process(python(stubborn_code), tmp_path / "b.log")
    for server in (polite, stubborn):
        server.wait_until(lambda server=server: "up" in server.logs(), "up", timeout=30)
    polite.stop(grace=10)
    stubborn.stop(grace=0.5)
    assert polite.process.returncode == -15  # SIGTERM ended it
    assert stubborn.process.returncode == -9  # SIGKILL after the grace period


def test_a_predictor_that_cannot_load_its_model_fails_with_its_log_and_is_gone(tmp_path):
    missing = tmp_path / "no-model-here"
    with pytest.raises(ServerNotReady) as failure:
        start_predictor(missing, tmp_path, timeout=120)
    message = str(failure.value)
    assert message.startswith("predictor sd model ready: exited with")
    assert str(missing) in message  # the server's own error, from its log
    (log,) = tmp_path.glob("server-*.log")
    assert str(missing) in log.read_text()


def test_a_threaded_http_server_serves_on_loopback_until_closed():
    class Hello(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"hello")

    with ThreadedHTTPServer(Hello) as server:
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert requests.get(server.url, timeout=5).text == "hello"
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", server.port), timeout=2):
        pass


def test_free_port_is_bindable_on_loopback():
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_env_adds_to_the_environment_and_none_unsets(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_DROPPED", "inherited")
    code = "import os; print(os.environ.get('HARNESS_DROPPED', 'unset'), os.environ['HARNESS_ADDED'], flush=True)"
    server = start_process(python(code), tmp_path / "env.log", env={"HARNESS_DROPPED": None, "HARNESS_ADDED": "added"})
    assert server.process.wait(timeout=30) == 0
    assert server.logs() == "unset added\n"
