"""``python -m playground --endpoint NAME=URL [--endpoint ...]``: serve the playground page."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from playground.endpoints import EndpointSpecError, parse_endpoints


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m playground",
        description="Send one prompt to several KServe text-to-image endpoints and compare the images, "
        "or send N requests through a router and see which unit served each.",
    )
    parser.add_argument(
        "--endpoint",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="an endpoint: http://host:port/v2/models/MODEL (v2), http://host:port/v1/models/MODEL (v1), or an "
        "InferenceGraph router's URL (v1 body to the URL as is). Repeat for more. Also from $PLAYGROUND_ENDPOINTS "
        "(space-separated NAME=URL).",
    )
    parser.add_argument("--host", default=os.environ.get("PLAYGROUND_HOST", "127.0.0.1"), help="listen address")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PLAYGROUND_PORT", "7860")))
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for one endpoint's answer")
    parser.add_argument("--max_requests", type=int, default=100, help="most requests one router run may send")
    parser.add_argument("--max_concurrency", type=int, default=16, help="most requests in flight in a router run")
    parser.add_argument("--default_steps", type=int, default=25, help="the form's initial steps")
    parser.add_argument("--default_size", type=int, default=512, help="the form's initial width and height")
    parser.add_argument("--default_guidance", type=float, default=7.5, help="the form's initial guidance scale")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    specs = args.endpoint or os.environ.get("PLAYGROUND_ENDPOINTS", "").split()
    if not specs:
        parser.error("give at least one --endpoint NAME=URL (or set PLAYGROUND_ENDPOINTS)")
    try:
        endpoints = parse_endpoints(specs)
    except EndpointSpecError as error:
        parser.error(f"--endpoint {error}")
    for name, value in (("--timeout", args.timeout), ("--max_requests", args.max_requests),
                        ("--max_concurrency", args.max_concurrency)):
        if value <= 0:
            parser.error(f"{name} must be positive, got {value}")

    import uvicorn

    from playground.app import Settings, create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(
        endpoints=endpoints,
        timeout_s=args.timeout,
        max_requests=args.max_requests,
        max_concurrency=args.max_concurrency,
        default_steps=args.default_steps,
        default_size=args.default_size,
        default_guidance=args.default_guidance,
    )
    for endpoint in endpoints:
        logging.getLogger("playground").info("endpoint %s: %s %s", endpoint.name, endpoint.protocol, endpoint.infer_url)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
