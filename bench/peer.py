"""(peer): our server against KServe's own huggingfaceserver on the tiny BERT classifier (issue 18).

The peer is huggingfaceserver 0.14.1 (the last release that runs without vLLM; later ones import it
at start-up) in its own virtualenv, built by ``bench/peer_env.sh``; ``--peer_python`` names that
venv's interpreter. Both servers serve the same model directory with the same environment
(``OMP_NUM_THREADS``: the same torch intra-op threads), get the same v2 REST body from the same
closed-loop clients, and are measured in interleaved rounds; ratios ours / peer are reported
against the issue's goals, never asserted.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shlex
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.clients import CLASSIFIER_BODY, FixedBodyClient, HttpConnection
from bench.default_vs_one import build_tiny_classifier
from bench.measure import CONCURRENCY_LEVELS, closed_loop
from bench.servers import MODEL_NAME, Server, ServerSpec
from bench.stats import summarize

PEER_GOALS = {1: 1.0, 16: 1.5}  # issue 18: ours / peer requests per second, by concurrency
PEER_TASK = "sequence_classification"  # huggingfaceserver's MLTask name for a text classifier
SERVERS = ("ours", "peer")
NO_PEER = "no --peer_python given (build the peer's venv with bench/peer_env.sh VENV_DIR KSERVE_SRC)"


@dataclass
class PeerServer(Server):
    """``PYTHON -m huggingfaceserver`` on free loopback ports, started and stopped like ours.

    Argument names from huggingfaceserver 0.14.1's ``__main__.py`` (``--model_dir``, ``--task``)
    and kserve 0.14.1's ``model_server.parser`` (``--model_name``, ``--http_port``, ``--grpc_port``).
    """

    python: str = ""

    def command(self) -> list[str]:
        return [
            self.python,
            "-m",
            "huggingfaceserver",
            "--model_dir",
            self.model_dir,
            "--model_name",
            MODEL_NAME,
            "--task",
            PEER_TASK,
            "--http_port",
            str(self.http_port),
            "--grpc_port",
            str(self.grpc_port),
            *self.extra_args,
        ]


def peer_python_problem(peer_python: str | None) -> str | None:
    """Why the peer cannot be started from ``--peer_python``, or None when it can."""
    if not peer_python:
        return NO_PEER
    path = Path(peer_python)
    if not path.is_file() or not os.access(path, os.X_OK):
        return f"--peer_python {peer_python!r} is not an executable file"
    return None


def peer_env(env: dict[str, str]) -> dict[str, str]:
    """Our servers' environment (thread counts included) without PYTHONPATH: the peer imports only its venv."""
    return {key: value for key, value in env.items() if key != "PYTHONPATH"}


# ----------------------------------------------------------------------------- answers


def output_labels(outputs: list[dict], id2label: dict[str, str]) -> list[str]:
    """The predicted labels in a v2 response's outputs.

    Ours sends them as a BYTES tensor (``labels``); huggingfaceserver 0.14.1 sends the argmax class
    index as an INT64 tensor ``output-0`` (``HuggingfaceEncoderModel.postprocess`` through
    ``kserve.utils.utils.get_predict_response``), named here through the model's ``id2label``.
    """
    for output in outputs:
        if output.get("datatype") == "BYTES":
            return [str(value) for value in output.get("data", [])]
    for output in outputs:
        if str(output.get("datatype", "")).startswith(("INT", "UINT")):
            return [id2label.get(str(value), str(value)) for value in output.get("data", [])]
    return []


def compare_answers(outputs: dict[str, list[dict]], id2label: dict[str, str]) -> dict:
    """Each server's outputs (name, datatype, shape) and labels, and whether the labels agree."""
    answers = {
        key: {
            "outputs": [f"{o.get('name')} {o.get('datatype')} {o.get('shape')}" for o in server_outputs],
            "labels": output_labels(server_outputs, id2label),
        }
        for key, server_outputs in outputs.items()
    }
    labels = [answer["labels"] for answer in answers.values()]
    return {
        "answers": answers,
        "same_labels": bool(labels[0]) and all(other == labels[0] for other in labels[1:]),
        "same_output_shapes": len({str([o.get("shape") for o in v]) for v in outputs.values()}) == 1,
    }


def ask_both(servers: dict[str, Server], body: bytes) -> dict[str, list[dict]]:
    """The outputs of each server's answer to ``body``; an error naming the server that refuses it."""
    outputs = {}
    for key, server in servers.items():
        connection = HttpConnection(server.http, timeout=60)
        try:
            status, data = connection.request("POST", f"/v2/models/{MODEL_NAME}/infer", body)
        finally:
            connection.close()
        if status != 200:
            raise RuntimeError(f"(peer) {key} refused the v2 request {body[:200]!r}: HTTP {status}: {data[:300]!r}")
        outputs[key] = json.loads(data)["outputs"]
    return outputs


# ----------------------------------------------------------------------------- measurement


def interleaved_levels(
    servers: dict[str, Server], make_client: Callable[[Server], Any], levels: tuple[int, ...], requests: int,
    rounds: int,
) -> dict[str, list[dict]]:  # fmt: skip
    """Each server at each concurrency level, ``rounds`` times, interleaved: within a round every
    level runs on every server before the next level, the server order alternating from one level
    (and round) to the next, so a drift in the machine's load hits both alike. Per server and level:
    requests/s over the summed closed-loop wall time, p50/p90 of all latencies, server CPU per request
    (``/proc/PID/stat`` of the server process)."""
    samples = {key: {level: [] for level in levels} for key in servers}
    wall = {key: dict.fromkeys(levels, 0.0) for key in servers}
    cpu = {key: dict.fromkeys(levels, 0.0) for key in servers}
    for server in servers.values():  # warm-up: connections, first-call costs, every batch shape
        for level in levels:
            closed_loop(lambda s=server: make_client(s), level, level, {})
    for round_index in range(rounds):
        for level_index, level in enumerate(levels):
            order = list(servers) if (round_index + level_index) % 2 == 0 else list(reversed(servers))
            for key in order:
                server = servers[key]
                cpu_before = server.cpu_seconds()
                measured = closed_loop(lambda s=server: make_client(s), level, requests, {}, keep_samples=True)
                cpu[key][level] += server.cpu_seconds() - cpu_before
                wall[key][level] += measured["wall_s"]
                samples[key][level] += measured["samples_s"]
    result: dict[str, list[dict]] = {}
    for key in servers:
        result[key] = []
        for level in levels:
            stats = summarize(samples[key][level])
            count = len(samples[key][level])
            result[key].append(
                {
                    "concurrency": level,
                    "requests": count,
                    "requests_per_s": round(count / wall[key][level], 2),
                    "p50_ms": stats["p50_ms"],
                    "p90_ms": stats["p90_ms"],
                    "cpu_ms_per_request": round(1000 * cpu[key][level] / count, 3),
                }
            )
    return result


def peer_ratios(levels: dict[str, list[dict]], goals: dict[int, float]) -> list[dict]:
    """Per concurrency: ours / peer requests/s and CPU per request, and the throughput goal if there is one."""
    ratios = []
    for ours, peer in zip(levels["ours"], levels["peer"], strict=True):
        level = ours["concurrency"]
        throughput = round(ours["requests_per_s"] / peer["requests_per_s"], 3)
        goal = goals.get(level)
        ratios.append(
            {
                "concurrency": level,
                "throughput_ratio": throughput,
                "cpu_per_request_ratio": round(ours["cpu_ms_per_request"] / peer["cpu_ms_per_request"], 3)
                if peer["cpu_ms_per_request"]
                else None,
                "goal_min": goal,
                "goal_met": None if goal is None else throughput >= goal,
            }
        )
    return ratios


# ----------------------------------------------------------------------------- the part


def run_peer(
    args: argparse.Namespace, scratch: Path, out_dir: Path, env: dict[str, str], extra: list[str], device: str,
    stack: ExitStack,
) -> dict:  # fmt: skip
    """(peer): start ours (default flags) and the peer on one classifier, compare answers, measure."""
    problem = peer_python_problem(args.peer_python)
    if problem == NO_PEER:
        print(f"(peer) skipped: {problem}", flush=True)
        return {"skipped": problem}
    if problem:
        raise SystemExit(f"bench: {problem}")
    print("(peer) ours against KServe's huggingfaceserver (tiny classifier), interleaved ...", flush=True)
    model_dir = args.peer_model_dir or build_tiny_classifier(scratch / "tiny-classifier", env)
    id2label = json.loads((Path(model_dir) / "config.json").read_text()).get("id2label", {})
    servers: dict[str, Server] = {
        "ours": Server(ServerSpec("ours, default flags", None, None), model_dir, device, args.dtype,
                       out_dir / "server-peer-ours.log", env, extra),
        "peer": PeerServer(ServerSpec("huggingfaceserver", None, None), model_dir, device, args.dtype,
                           out_dir / "server-peer-peer.log", peer_env(env), shlex.split(args.peer_args),
                           python=args.peer_python),
    }  # fmt: skip
    for server in servers.values():
        stack.callback(server.stop)
        atexit.register(server.stop)
        server.start()
    for server in servers.values():
        server.wait_ready(args.startup_timeout)
    checked = compare_answers(ask_both(servers, CLASSIFIER_BODY), id2label)
    _print_answers(checked)
    levels = interleaved_levels(
        servers, lambda server: FixedBodyClient(server.http, CLASSIFIER_BODY), CONCURRENCY_LEVELS,
        args.peer_requests, args.peer_rounds,
    )  # fmt: skip
    for server in servers.values():
        server.stop()
    ratios = peer_ratios(levels, PEER_GOALS)
    for ratio in ratios:
        print(f"  c={ratio['concurrency']:<3} ours / peer: {ratio['throughput_ratio']:.2f} req/s, "
              f"{ratio['cpu_per_request_ratio']} CPU per request", flush=True)  # fmt: skip
    return {
        "model": args.peer_model_dir or "tiny BERT text classifier (modelbuild.tiny_models)",
        "commands": {key: server.command()[1:] for key, server in servers.items()},
        "request": json.loads(CLASSIFIER_BODY),
        **checked,
        "rounds": args.peer_rounds,
        "requests_per_level": args.peer_requests,
        "servers": levels,
        "ratios": ratios,
    }


def _print_answers(checked: dict) -> None:
    for key, answer in checked["answers"].items():
        print(f"  {key} answers {', '.join(answer['outputs'])}: labels {answer['labels']}", flush=True)
    if not checked["same_labels"]:
        print("  the two servers' labels DIFFER on the same request", flush=True)
    if not checked["same_output_shapes"]:
        print("  their output tensors differ in shape (formats differ: labels and scores vs class index)", flush=True)
