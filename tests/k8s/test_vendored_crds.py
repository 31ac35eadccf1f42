"""The vendored CRDs are the upstream files, byte for byte, and every one is recorded in SOURCES.md."""

from __future__ import annotations

import hashlib
import re

from k8slib import CRDS_DIR

ROW = re.compile(r"^\| (?P<file>\S+\.yaml) \| (?P<repo>https://github\.com/\S+) \| (?P<path>\S+) \| (?P<commit>[0-9a-f]{40}) \| (?P<license>[^|]+) \| (?P<blob>[0-9a-f]{40}) \|$")


def git_blob_id(data: bytes) -> str:
    """What `git hash-object` prints for a file with these bytes."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _sources() -> dict[str, dict[str, str]]:
    rows = {}
    for line in (CRDS_DIR / "SOURCES.md").read_text().splitlines():
        match = ROW.match(line)
        if match:
            rows[match["file"]] = match.groupdict()
    return rows


def test_every_vendored_crd_is_recorded_with_its_source() -> None:
    files = {path.name for path in CRDS_DIR.glob("*.yaml")}
    assert files, f"no CRDs in {CRDS_DIR}"
    assert files == set(_sources()), "SOURCES.md and the CRD files disagree"


def test_every_vendored_crd_is_the_upstream_blob_unmodified() -> None:
    for name, row in _sources().items():
        data = (CRDS_DIR / name).read_bytes()
        assert git_blob_id(data) == row["blob"], f"{name} differs from {row['repo']}@{row['commit']}:{row['path']}"
        assert row["license"].strip() == "Apache-2.0"
