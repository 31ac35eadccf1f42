"""``python -m bench``: what serving costs, measured against the bare pipeline.

One run measures, against one model (a tiny random Stable Diffusion pipeline built in a temp
dir unless ``--model_dir`` is given):

(a) latency: the diffusers pipeline called directly in this process, interleaved with the same
    image requested over KServe v2 REST and gRPC from a server started as a subprocess; p50/p90
    and the ratio served/direct (goal: p50 ratio <= 1.10);
(b) throughput: closed-loop REST clients at concurrency 1/4/16 against a server with dynamic
    batching and one without; images/s and latency percentiles;
(c) ``/v2/models/{name}/ready`` latency while 16 long inferences are in flight (goal p99 < 50 ms);
(d) the default server against ``--max_batch_size 1`` (bench/default_vs_one.py);
(peer) the default server against KServe's own huggingfaceserver on a tiny text classifier
    (bench/peer.py; needs ``--peer_python``, the interpreter of a venv built by bench/peer_env.sh).

It prints tables, writes ``--out DIR/bench.json`` (and ``bench.md``, the same tables in
Markdown) and always stops the servers it started. Performance goals are reported, never
asserted: this is a benchmark, not a test.

This process must not import kserve (nor predictor modules that do): kserve and
``tritonclient.grpc`` clash in one process (protobuf descriptors). The servers are the real
``python -m predictor`` in subprocesses.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import shlex
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.default_vs_one import run_default_vs_one
from bench.direct import DirectPipeline, torch_dtype
from bench.latency import run_latency
from bench.measure import run_ready, run_throughput
from bench.peer import peer_python_problem, run_peer
from bench.report import markdown_tables
from bench.servers import REPO, Server, ServerSpec


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0].split(": ", 1)[-1])
    parser.add_argument(
        "--model_dir",
        default=None,
        help="Model to serve; default: build modelbuild.tiny's tiny random SD in a temp dir. For real-size GPU "
        "timings without a checkpoint, build one with `python -m loadtest.realsize DIR`.",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), default="auto")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2, help="num_inference_steps for (a) and (b).")
    parser.add_argument("--repeats", type=int, default=40, help="Interleaved rounds in (a).")
    parser.add_argument("--requests", type=int, default=96, help="Requests per concurrency level in (b).")
    parser.add_argument("--ready_steps", type=int, default=20, help="Steps of each in-flight inference in (c).")
    parser.add_argument("--ready_seconds", type=float, default=6.0, help="How long (c) polls.")
    parser.add_argument("--gap_ms", type=float, default=30.0, help="Idle time before each call in (a).")
    parser.add_argument("--batch_size", type=int, default=8, help="--max_batch_size of the batching server.")
    parser.add_argument("--batch_wait_ms", type=float, default=10.0, help="--batch_wait_ms of the batching server.")
    parser.add_argument(
        "--torch_threads",
        type=int,
        default=0,
        help="torch intra-op threads in this process and the servers (OMP_NUM_THREADS); 0: torch's default here.",
    )
    parser.add_argument(
        "--parts", default="a,b,c,d", help="Which measurements to run, e.g. 'a' or 'a,d'; 'peer' is not in the default."
    )
    parser.add_argument("--d_rounds", type=int, default=3, help="Interleaved rounds of (d).")
    _add_peer_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="Tiny counts: a smoke run, not a measurement.")
    parser.add_argument("--out", default=None, help="Directory for bench.json, bench.md and the server logs.")
    parser.add_argument(
        "--server_args", default="", help="Extra arguments for both servers, one string (e.g. for experiments)."
    )
    parser.add_argument(
        "--server_env", action="append", default=[], metavar="KEY=VALUE", help="Extra environment for both servers."
    )
    parser.add_argument("--startup_timeout", type=float, default=300.0, help="Seconds to wait for a server.")
    return parser


def _add_peer_arguments(parser: argparse.ArgumentParser) -> None:
    peer = parser.add_argument_group("peer", "--parts peer: ours against KServe's huggingfaceserver (issue 18)")
    peer.add_argument(
        "--peer_python",
        default=None,
        help="Python of a venv with kserve and huggingfaceserver 0.14.1 (bench/peer_env.sh); without it the part "
        "is skipped.",
    )
    peer.add_argument(
        "--peer_model_dir", default=None, help="Text classifier both serve; default: modelbuild.tiny_models' tiny BERT."
    )
    peer.add_argument("--peer_rounds", type=int, default=2, help="Interleaved rounds of (peer).")
    peer.add_argument("--peer_requests", type=int, default=400, help="Requests per server, level and round of (peer).")
    peer.add_argument("--peer_args", default="", help="Extra arguments for the peer only, one string.")


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench: --device cuda but torch.cuda.is_available() is False")
    return requested


def _install_signal_cleanup() -> None:
    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)


def run(args: argparse.Namespace, argv: list[str]) -> dict:
    """Run the chosen parts against servers started here; write bench.json and bench.md to --out."""
    parts = _parts(args)
    started_at = time.time()
    kserve_before = "kserve" in sys.modules  # a caller's (a test session's) import is not the benchmark's

    import torch

    device = resolve_device(args.device)
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    threads = torch.get_num_threads()

    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="predictor-bench-")))
        out_dir = Path(args.out) if args.out else scratch
        out_dir.mkdir(parents=True, exist_ok=True)
        model_dir, model_label = (
            _model(args, scratch) if parts & {"a", "b", "c", "d"} else ("", "none: (a)-(d) not run")
        )
        env = _server_env(args, threads)
        extra = shlex.split(args.server_args)
        specs = server_specs(args)
        servers = _start_servers(
            specs if parts & {"a", "b", "c"} else {}, args, model_dir, device, out_dir, env, extra, stack
        )

        direct = DirectPipeline(model_dir, device, args.dtype) if "a" in parts else None
        for server in servers.values():
            server.wait_ready(args.startup_timeout)
        print(f"servers ready after {time.time() - started_at:.1f}s", flush=True)

        image = {"steps": args.steps, "height": args.height, "width": args.width}
        meta = {
            "command": " ".join(["python -m bench", shlex.join(argv)]).strip(),
            "model": model_label,
            "device": device,
            "device_name": _device_name(device),
            "dtype": str(torch_dtype(args.dtype, device)).removeprefix("torch."),
            "cpu": f"{platform.processor() or platform.machine()}, {_usable_cores()} of {os.cpu_count()} cores usable",
            "torch": torch.__version__,
            "torch_threads": threads,
            "python": platform.python_version(),
            "servers": {key: server.command()[2:] for key, server in servers.items()},
            "server_env": args.server_env,
            "quick": args.quick,
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            **image,
        }
        report: dict[str, Any] = {"meta": meta}
        if "a" in parts:
            report["latency"] = run_latency(args, servers, direct, image)
            del direct
        if "b" in parts:
            report["throughput"] = run_throughput(servers, specs, image, args.requests)
        if "c" in parts:
            report["ready"] = run_ready(servers, specs, {**image, "steps": args.ready_steps}, args.ready_seconds)
        for server in servers.values():  # (a)-(c) are over: their servers must not share the CPU with what follows
            server.stop()
        if "d" in parts:
            report["default_vs_one"] = run_default_vs_one(args, model_dir, scratch, out_dir, env, extra, device, stack)
        if "peer" in parts:
            report["peer"] = run_peer(args, scratch, out_dir, env, extra, device, stack)

        meta["duration_s"] = round(time.time() - started_at, 1)
        meta["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        if "kserve" in sys.modules and not kserve_before:  # would break tritonclient.grpc in this process
            raise RuntimeError("bench imported kserve")
        _write_report(report, out_dir if args.out else None)
        return report


def _parts(args: argparse.Namespace) -> set[str]:
    """The parts to run, from --parts; --quick also shrinks every count to a smoke run."""
    parts = {part.strip() for part in args.parts.split(",") if part.strip()}
    if not parts <= {"a", "b", "c", "d", "peer"}:
        raise SystemExit(f"bench: --parts takes a, b, c, d and peer, got {args.parts!r}")
    if "peer" in parts and args.peer_python and (problem := peer_python_problem(args.peer_python)):
        raise SystemExit(f"bench: {problem}")  # before any other part spends minutes
    if args.quick:
        args.d_rounds = args.peer_rounds = 1
        args.peer_requests = min(args.peer_requests, 16)
        args.repeats = min(args.repeats, 3)
        args.requests = min(args.requests, 16)
        args.ready_steps = min(args.ready_steps, 2)
        args.ready_seconds = min(args.ready_seconds, 0.5)
    return parts


def _model(args: argparse.Namespace, scratch: Path) -> tuple[str, str]:
    """The model directory to serve and its label: --model_dir, or modelbuild.tiny's tiny SD."""
    if args.model_dir:
        return str(Path(args.model_dir).resolve()), args.model_dir
    from modelbuild.tiny import build_tiny_sd

    return str(build_tiny_sd(scratch / "tiny-sd")), "tiny random SD (modelbuild.tiny)"


def _server_env(args: argparse.Namespace, threads: int) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    for item in args.server_env:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"bench: --server_env takes KEY=VALUE, got {item!r}")
        env[key] = value
    return env


def server_specs(args: argparse.Namespace) -> dict[str, ServerSpec]:
    """The two servers of (a)-(c): one batching, one not."""
    return {
        "batching": ServerSpec(
            f"batching (max_batch_size {args.batch_size}, batch_wait_ms {args.batch_wait_ms:g})",
            args.batch_size,
            args.batch_wait_ms,
        ),
        "no_batching": ServerSpec("no batching (max_batch_size 1)", 1, 0.0),
    }


def _start_servers(
    specs: dict[str, ServerSpec], args: argparse.Namespace, model_dir: str, device: str, out_dir: Path,
    env: dict[str, str], extra: list[str], stack: ExitStack,
) -> dict[str, Server]:  # fmt: skip
    """Start one server per spec; each is stopped when the stack closes or the process exits."""
    servers: dict[str, Server] = {}
    for key, spec in specs.items():
        server = Server(spec, model_dir, device, args.dtype, out_dir / f"server-{key}.log", env, extra)
        stack.callback(server.stop)
        atexit.register(server.stop)
        servers[key] = server
        server.start()
        print(f"started {spec.label}: pid {server.process.pid}, http {server.http}, grpc {server.grpc}", flush=True)
    return servers


def _write_report(report: dict, out_dir: Path | None) -> None:
    markdown = markdown_tables(report)
    print()
    print(markdown)
    if out_dir is not None:
        (out_dir / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
        (out_dir / "bench.md").write_text(f"`{report['meta']['command']}`\n\n" + markdown)
        print(f"wrote {out_dir / 'bench.json'} and {out_dir / 'bench.md'}")


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what taskset / a cgroup cpuset leaves this process
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} x{_usable_cores()}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    _install_signal_cleanup()
    run(args, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
