"""``python -m loadtest {run,apply,plot,realsize}``: find a deployment unit's breaking point.

run       drive a KServe v2 endpoint (REST or gRPC) with open-loop stages of rising rate; write
          result.json, result.png and requests.csv to --out.
apply     copy a result's measured max_throughput/latency_s into a unit of the controller config.
plot      redraw the PNG from a result.json.
realsize  build an SD 2.1-shaped pipeline with random weights (for GPU load tests).

``python -m loadtest --url ...`` is short for ``run --url ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

from loadtest.analysis import LATENCY_STATS, Criteria, stage_rates
from loadtest.runner import ARRIVALS, RunSettings, RunState

COMMANDS = ("run", "apply", "plot", "realsize")
EXIT_INTERRUPTED = 130


def _header(value: str) -> tuple[str, str]:
    name, sep, content = value.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {value!r}")
    return name.strip(), content.strip()


def _param(value: str) -> tuple[str, Any]:
    key, sep, raw = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {value!r}")
    parsed: Any = raw
    for cast in (int, float):
        try:
            parsed = cast(raw)
            break
        except ValueError:
            continue
    if raw.lower() in ("true", "false"):
        parsed = raw.lower() == "true"
    return key, parsed


def _rates(value: str) -> list[float]:
    try:
        return [float(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {value!r}") from None


def run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtest run",
        description="Open-loop load test of a KServe v2 endpoint: stages of rising request rate until the "
        "breaking point (latency SLO, error rate or throughput plateau). Latency is measured from each "
        "request's scheduled send time.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    t = p.add_argument_group("target")
    t.add_argument("--url", required=True, help="http(s)://host:port for REST, grpc(s)://host:port for gRPC (no path)")
    t.add_argument("--model", default="sd", help="model name in /v2/models/NAME")
    t.add_argument(
        "--host", help="Host header / gRPC authority, for Knative routing (e.g. sd21-inf2-predictor.sd21.example.com)"
    )
    t.add_argument(
        "--header",
        action="append",
        type=_header,
        default=[],
        metavar="'NAME: VALUE'",
        help="extra request header / gRPC metadata (repeatable)",
    )
    t.add_argument("--insecure", action="store_true", help="do not verify the server's TLS certificate (https)")
    t.add_argument("--timeout", type=float, default=60.0, help="per-request timeout (s)")
    t.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="replicas serving the endpoint during the test; per-replica figures divide by it",
    )
    t.add_argument("--unit", help="controller unit this measures (stored in the result, used by apply)")

    r = p.add_argument_group("request")
    r.add_argument("--prompt", action="append", default=[], help="prompt (repeatable; requests cycle through them)")
    r.add_argument("--steps", type=int, help="num_inference_steps (server default when omitted)")
    r.add_argument("--height", type=int, help="image height (server default when omitted)")
    r.add_argument("--width", type=int, help="image width (server default when omitted)")
    r.add_argument("--guidance-scale", type=float, help="guidance_scale (server default when omitted)")
    r.add_argument(
        "--seed", type=int, default=None, help="image seed sent with every request (server picks one when omitted)"
    )
    r.add_argument(
        "--param",
        action="append",
        type=_param,
        default=[],
        metavar="KEY=VALUE",
        help="extra v2 request parameter (repeatable)",
    )

    s = p.add_argument_group("stages")
    s.add_argument("--rates", type=_rates, help="explicit offered rates per stage, e.g. 0.5,1,2,4")
    s.add_argument("--start-rate", type=float, default=1.0, help="first stage's rate (requests/s)")
    s.add_argument("--factor", type=float, default=1.5, help="each next stage's rate = previous x factor")
    s.add_argument("--step", type=float, help="each next stage's rate = previous + step (instead of --factor)")
    s.add_argument("--max-stages", type=int, default=12, help="most stages")
    s.add_argument("--max-rate", type=float, help="highest rate to try")
    s.add_argument("--stage-seconds", type=float, default=30.0, help="length of each stage's schedule")
    s.add_argument(
        "--arrival",
        choices=ARRIVALS,
        default="poisson",
        help="inter-arrival times: poisson (random, exact count) or uniform",
    )
    s.add_argument(
        "--max-inflight",
        type=int,
        default=256,
        help="cap on outstanding requests; due requests beyond it are dropped and counted as errors",
    )
    s.add_argument("--max-duration", type=float, default=1800.0, help="time budget for all stages (s)")
    s.add_argument("--max-requests", type=int, default=20000, help="request budget for all stages")
    s.add_argument(
        "--probe-requests",
        type=int,
        default=1,
        help="sequential, fully checked requests before the first stage (not counted)",
    )
    s.add_argument("--ready-timeout", type=float, default=60.0, help="wait this long for the model to be ready")
    s.add_argument("--random-seed", type=int, default=0, help="seed of the arrival schedule")

    c = p.add_argument_group("breaking point")
    c.add_argument("--slo", type=float, default=0.9, help="latency SLO (s)")
    c.add_argument(
        "--slo-percentile",
        choices=LATENCY_STATS,
        default="p90",
        help="latency statistic held to the SLO (and written as the unit's latency_s)",
    )
    c.add_argument("--max-error-rate", type=float, default=0.01, help="highest sustainable error rate")
    c.add_argument(
        "--min-throughput-ratio",
        type=float,
        default=0.9,
        help="a stage must serve at least this fraction of its offered rate",
    )
    c.add_argument(
        "--plateau-gain",
        type=float,
        default=0.5,
        help="from one stage to the next, at least this fraction of the extra load must be served",
    )
    c.add_argument("--utilization", type=float, default=0.7, help="KPA target = max sustainable x utilization")

    o = p.add_argument_group("output")
    o.add_argument(
        "--out", type=Path, default=Path("loadtest-out"), help="directory for result.json, result.png, requests.csv"
    )
    o.add_argument("--no-plot", action="store_true", help="skip the PNG")
    o.add_argument("--progress-interval", type=float, default=1.0, help="seconds between progress lines")
    return p


def _apply_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtest apply",
        description="Set a unit's max_throughput and latency_s in the controller config from a result.json "
        "(the rest of the file is left as it is; the result is validated first).",
    )
    p.add_argument("--result", required=True, type=Path, help="result.json written by 'run'")
    p.add_argument("--config", required=True, type=Path, help="controller config YAML to update in place")
    p.add_argument("--unit", help="unit name (default: the --unit given to 'run')")
    p.add_argument("--dry-run", action="store_true", help="print the change, do not write")
    return p


def _plot_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest plot", description="Redraw the PNG of a result.")
    p.add_argument("--result", required=True, type=Path)
    p.add_argument("--png", type=Path, help="output (default: next to the result, .png)")
    p.add_argument("--title")
    return p


# --------------------------------------------------------------------------- run


def _request_parameters(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, value in (
        ("num_inference_steps", args.steps),
        ("height", args.height),
        ("width", args.width),
        ("guidance_scale", args.guidance_scale),
        ("seed", args.seed),
    ):
        if value is not None:
            params[key] = value
    params.update(dict(args.param))
    return params


def _write_outputs(state: RunState, args, criteria: Criteria, target, settings: RunSettings, command: str) -> dict:
    from loadtest.report import build_result, summary_text, write_json, write_requests_csv

    result = build_result(
        stages=state.stats(),
        evaluation=state.evaluation,
        criteria=criteria,
        target={
            "url": target.url,
            "protocol": target.protocol,
            "model": target.model,
            "host": target.host,
            "prompts": len(target.prompts),
            "parameters": target.parameters,
            "timeout_s": target.timeout_s,
        },
        settings={
            "rates": list(settings.rates),
            "stage_seconds": settings.stage_seconds,
            "arrival": settings.arrival,
            "max_inflight": settings.max_inflight,
            "max_duration_s": settings.max_duration_s,
            "max_requests": settings.max_requests,
            "replicas": args.replicas,
            "utilization": args.utilization,
            "seed": settings.seed,
        },
        replicas=args.replicas,
        utilization=args.utilization,
        unit_name=args.unit,
        started_at=state.started_at,
        finished_at=state.finished_at,
        stop_reason=state.stop_reason,
        interrupted=state.interrupted,
        command=command,
    )
    out: Path = args.out
    write_json(result, out / "result.json")
    write_requests_csv(state.stages, out / "requests.csv")
    written = [out / "result.json", out / "requests.csv"]
    if not args.no_plot and state.stats():
        from loadtest.plot import plot_result

        written.append(plot_result(result, out / "result.png"))
    print(summary_text(result))
    print("wrote " + ", ".join(str(p) for p in written))
    if result.get("unit"):
        unit = args.unit or "UNIT"
        print(
            f"update the controller config: python -m loadtest apply --result {out / 'result.json'} "
            f"--config controller.yaml --unit {unit}"
        )
    return result


def cmd_run(argv: list[str]) -> int:
    from loadtest.clients import EndpointError, Target, make_client, protocol_of
    from loadtest.runner import run_load_test

    parser = run_parser()
    args = parser.parse_args(argv)
    try:
        protocol_of(args.url)
        rates = stage_rates(
            args.rates,
            start=args.start_rate,
            factor=args.factor,
            step=args.step,
            count=args.max_stages,
            max_rate=args.max_rate,
        )
        criteria = Criteria(
            slo_latency_s=args.slo,
            slo_percentile=args.slo_percentile,
            max_error_rate=args.max_error_rate,
            min_throughput_ratio=args.min_throughput_ratio,
            plateau_gain=args.plateau_gain,
        )
        settings = RunSettings(
            rates=tuple(rates),
            stage_seconds=args.stage_seconds,
            arrival=args.arrival,
            max_inflight=args.max_inflight,
            max_duration_s=args.max_duration,
            max_requests=args.max_requests,
            probe_requests=args.probe_requests,
            ready_timeout_s=args.ready_timeout,
            seed=args.random_seed,
            progress_interval_s=args.progress_interval,
        )
        if args.replicas < 1:
            raise ValueError("--replicas must be >= 1")
        if not 0 < args.utilization <= 1:
            raise ValueError("--utilization must be within (0, 1]")
        if not args.timeout > 0:
            raise ValueError("--timeout must be > 0")
    except ValueError as error:
        parser.error(str(error))
    target = Target(
        url=args.url,
        model=args.model,
        prompts=tuple(args.prompt) or Target.prompts,
        parameters=_request_parameters(args),
        host=args.host,
        headers=dict(args.header),
        timeout_s=args.timeout,
        verify_tls=not args.insecure,
    )
    command = "python -m loadtest run " + shlex.join(argv)
    state = RunState()
    client = make_client(target, settings.max_inflight)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        task = asyncio.current_task()
        presses = 0

        def on_signal() -> None:
            nonlocal presses
            presses += 1
            if presses == 1:
                print(
                    "\nstopping: finishing outstanding requests, then writing results (Ctrl-C again to cut short)",
                    file=sys.stderr,
                )
                stop.set()
            elif task is not None:
                task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, on_signal)
            except (NotImplementedError, RuntimeError):  # not on the main thread / platform
                pass
        await run_load_test(client, settings, criteria, state, stop=stop)

    code = 0
    try:
        asyncio.run(main())
    except EndpointError as error:
        print(f"loadtest: error: {error}", file=sys.stderr)
        return 2
    except (asyncio.CancelledError, KeyboardInterrupt):
        state.interrupted = True
        state.stop_reason = "interrupted"
    if state.interrupted:
        code = EXIT_INTERRUPTED
    if state.evaluation is None:
        from loadtest.analysis import evaluate

        state.evaluation = evaluate(state.stats(), criteria)
    if state.finished_at is None:
        import time

        state.finished_at = time.time()
    _write_outputs(state, args, criteria, target, settings, command)
    return code


# --------------------------------------------------------------------------- apply / plot / realsize


def cmd_apply(argv: list[str]) -> int:
    from loadtest.apply import ApplyError, apply_result, unit_values
    from loadtest.report import load_result

    args = _apply_parser().parse_args(argv)
    try:
        result = load_result(args.result)
        measured = unit_values(result)
        diff, name = apply_result(result, args.config, unit=args.unit, dry_run=args.dry_run)
    except (ApplyError, ValueError) as error:
        print(f"loadtest apply: error: {error}", file=sys.stderr)
        return 2
    if measured.get("lower_bound"):
        print("warning: the run did not reach a breaking point; max_throughput is a lower bound", file=sys.stderr)
    if not diff:
        print(
            f"{args.config}: unit {name} already has max_throughput {measured['max_throughput']:g}, "
            f"latency_s {measured['latency_s']:g}"
        )
        return 0
    print(diff, end="")
    verb = "would update" if args.dry_run else "updated"
    print(
        f"{verb} {args.config}: unit {name} max_throughput {measured['max_throughput']:g} requests/s, "
        f"latency_s {measured['latency_s']:g} ({measured.get('latency_stat', 'p90')})"
    )
    return 0


def cmd_plot(argv: list[str]) -> int:
    from loadtest.plot import plot_result
    from loadtest.report import load_result

    args = _plot_parser().parse_args(argv)
    try:
        result = load_result(args.result)
    except ValueError as error:
        print(f"loadtest plot: error: {error}", file=sys.stderr)
        return 2
    png = args.png or args.result.with_suffix(".png")
    print(f"wrote {plot_result(result, png, title=args.title)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    command = argv[0] if argv and argv[0] in COMMANDS else "run"
    rest = argv[1:] if argv and argv[0] in COMMANDS else argv
    if command == "apply":
        return cmd_apply(rest)
    if command == "plot":
        return cmd_plot(rest)
    if command == "realsize":
        from loadtest.realsize import main as realsize_main

        return realsize_main(rest)
    return cmd_run(rest)


if __name__ == "__main__":
    sys.exit(main())
