"""Command line: ``python -m controller {run,plan,simulate} ...``.

``plan`` and ``simulate`` belong to the planner/simulator and are imported lazily from
``controller.plan`` and ``controller.simulate`` (each exposes ``main(argv) -> int``), so this
module works even where they are missing and a missing one is a clear error.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from controller.config import ConfigError, load_config

_DELEGATED = {"plan": "controller.plan", "simulate": "controller.simulate"}


def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m controller run",
        description="Run the traffic-split controller (cost-optimized <-> capacity-optimized).",
    )
    p.add_argument("--config", required=True, help="controller.yaml")
    p.add_argument("--kubeconfig", help="kubeconfig file; in-cluster config when omitted")
    p.add_argument("--context", help="kubeconfig context (default: current context)")
    p.add_argument("--once", action="store_true", help="one reconcile, print the decision as JSON, exit")
    p.add_argument("--dry-run", action="store_true", help="decide and log, never write to the cluster")
    p.add_argument("--identity", help="leader-election identity (default: $POD_NAME or hostname)")
    p.add_argument("--metrics-port", type=int, help="override metrics_port (0 = pick a free port)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def _top_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m controller",
        description="Traffic-split controller for KServe InferenceServices.",
        epilog="Run 'python -m controller COMMAND --help' for a command's options.",
    )
    p.add_argument("command", choices=["run", *sorted(_DELEGATED)], help="what to do")
    return p


def _delegate(command: str, argv: list[str]) -> int:
    module_name = _DELEGATED[command]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        print(
            f"python -m controller {command}: {module_name} is not installed in this build "
            f"(it comes with the planner/simulator)",
            file=sys.stderr,
        )
        return 2
    main = getattr(module, "main", None)
    if main is None:
        print(f"python -m controller {command}: {module_name} has no main(argv)", file=sys.stderr)
        return 2
    return int(main(argv) or 0)


def _run(argv: list[str]) -> int:
    args = _run_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        config = load_config(args.config, env=os.environ)  # site settings may set the Prometheus URL
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    from controller.loop import run_cli  # imports the kubernetes client only when needed

    return run_cli(
        config,
        kubeconfig=args.kubeconfig,
        context=args.context,
        once=args.once,
        dry_run=args.dry_run,
        identity=args.identity,
        metrics_port=args.metrics_port,
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        _top_parser().print_help()
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "run":
        return _run(rest)
    if command in _DELEGATED:
        return _delegate(command, rest)
    _top_parser().parse_args(argv[:1])  # prints the usage error and exits 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
