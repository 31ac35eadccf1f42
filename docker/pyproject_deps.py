"""Print the runtime dependencies of a pyproject.toml, one per line, minus excluded names.

Used by Dockerfile.neuron to install this package's dependencies around the Neuron SDK that
the base image ships (``--exclude torch transformers diffusers``):

    python docker/pyproject_deps.py pyproject.toml --exclude torch transformers

and by Dockerfile.playground to install one optional extra alone (``--extra playground``).
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


def dependencies(pyproject: Path, exclude: Iterable[str] = (), extra: str | None = None) -> list[str]:
    """The runtime dependencies, or with ``extra`` that optional extra's only."""
    excluded = {normalize(name) for name in exclude}
    with pyproject.open("rb") as handle:
        project = tomllib.load(handle)["project"]
    if extra is None:
        deps = project.get("dependencies", [])
    else:
        extras = project.get("optional-dependencies", {})
        if extra not in extras:
            raise KeyError(f"{pyproject} has no optional extra {extra!r} (it has: {', '.join(sorted(extras))})")
        deps = extras[extra]
    return [dep for dep in deps if requirement_name(dep) not in excluded]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--exclude", nargs="*", default=[], help="Project names to leave out.")
    parser.add_argument("--extra", help="Print this optional extra's dependencies instead of the runtime ones.")
    args = parser.parse_args(argv)
    try:
        deps = dependencies(args.pyproject, args.exclude, args.extra)
    except KeyError as error:
        print(f"pyproject_deps: {error.args[0]}", file=sys.stderr)
        return 2
    for dep in deps:
        print(dep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
