"""Print the runtime dependencies of a pyproject.toml, one per line, minus excluded names.

Used by Dockerfile.neuron to install this package's dependencies around the Neuron SDK that
the base image ships (``--exclude torch transformers diffusers``):

    python docker/pyproject_deps.py pyproject.toml --exclude torch transformers
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalize(name: str) -> str:
    """PEP 503 normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = _NAME.match(requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return normalize(match.group(1))


def dependencies(pyproject: Path, exclude: Iterable[str] = ()) -> list[str]:
    excluded = {normalize(name) for name in exclude}
    with pyproject.open("rb") as handle:
        deps = tomllib.load(handle)["project"].get("dependencies", [])
    return [dep for dep in deps if requirement_name(dep) not in excluded]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--exclude", nargs="*", default=[], help="Project names to leave out.")
    args = parser.parse_args(argv)
    for dep in dependencies(args.pyproject, args.exclude):
        print(dep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
