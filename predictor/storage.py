"""Where the model comes from: a local directory, a Hugging Face repo, or S3.

In a cluster KServe's storage initializer usually mounts ``storageUri`` at ``/mnt/models`` and
the runtime only reads that directory. When a pod is given ``--model_id`` instead, we download
selectively: only the files the pipeline loads (configs, tokenizer, and one weights format per
component) rather than every file of the repo. Stable Diffusion repos also carry multi-GB
single-file checkpoints at their root and several weight variants; skipping those is most of
the start-up time saved. The same selection applies to Hugging Face and S3 listings.

What is downloaded is what is loaded: ``weights_variant(device, dtype)`` is the one choice of
weights variant (fp16 on CUDA) used both to select files and, through ``local_weights_variant``,
to pass ``variant=`` to ``from_pretrained`` for what is actually on disk.

A download is complete only when it says so: a marker file is written before the first byte and
replaced by a manifest (files and sizes) after the last. A directory with the marker (a pod killed
mid-download) or whose files no longer match its manifest is fetched again, resuming: files
already there at their full size are kept, and S3 objects are written to ``*.part`` and renamed
when complete, so a truncated file never carries its final name.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

logger = logging.getLogger(__name__)

MODEL_MARKERS = ("model_index.json", "config.json")
CONFIG_SUFFIXES = (".json", ".txt", ".model", ".tiktoken")
WEIGHT_SUFFIXES = (".safetensors", ".bin")
NEURON_SUFFIX = ".neuron"
KNOWN_VARIANTS = ("fp16", "bf16", "ema", "non_ema", "fp32")
DOWNLOAD_MANIFEST = ".predictor-download.json"
DOWNLOAD_INCOMPLETE = ".predictor-download-incomplete"
PART_SUFFIX = ".part"


class ModelSourceError(RuntimeError):
    """The model cannot be found or fetched."""


def has_model(directory: str | Path) -> bool:
    path = Path(directory)
    if any((path / marker).is_file() for marker in MODEL_MARKERS):
        return True
    return path.is_dir() and any(path.glob("*.gguf"))  # a llama.cpp model: the GGUF file alone


def weights_variant(device_kind: str, dtype: str) -> str | None:
    """The weights variant to fetch and load: half-precision files where the weights run in float16."""
    if dtype == "float16" or (dtype == "auto" and device_kind == "cuda"):
        return "fp16"
    return None


def local_weights_variant(model_dir: str | Path, preferred: str | None = None) -> str | None:
    """The ``variant=`` for ``from_pretrained`` that loads the weights present in ``model_dir``.

    The same rule as the download selection (``_pick_weights``): the preferred variant where its
    files exist, else the plain files, else the variant a folder holds only. diffusers loads the
    plain file of a component that lacks the variant file, so one variant serves a mixed pipeline.
    """
    directory = Path(model_dir)
    by_folder: dict[Path, set[str | None]] = {}
    for path in [*directory.glob("*"), *directory.glob("*/*")]:
        if path.is_file() and path.name.endswith(WEIGHT_SUFFIXES):
            by_folder.setdefault(path.parent, set()).add(_variant_of(path.name))
    present = set().union(*by_folder.values()) if by_folder else set()
    if preferred is not None and preferred in present:
        return preferred
    only_variants = sorted(v for found in by_folder.values() if None not in found for v in found if v is not None)
    return only_variants[0] if only_variants else None


def _variant_of(filename: str) -> str | None:
    """'diffusion_pytorch_model.fp16.safetensors' -> 'fp16'; no variant -> None."""
    parts = PurePosixPath(filename).name.split(".")
    if len(parts) >= 3 and parts[-2] in KNOWN_VARIANTS:
        return parts[-2]
    return None


def select_model_files(
    files: Iterable[str],
    *,
    components: Iterable[str] | None = None,
    variant: str | None = None,
    neuron: bool = False,
) -> list[str]:
    """Choose the files to download from a repository listing (paths relative to the repo root).

    - ``components``: the pipeline's sub-folders (from model_index.json); files outside them and
      the root are skipped, which drops root-level monolithic checkpoints. ``None`` means a
      single-model repo (transformers layout): root files only.
    - per folder, one weights format: compiled ``*.neuron`` artefacts when ``neuron``; else
      safetensors over ``.bin``; the requested ``variant`` (e.g. fp16) when the folder has it,
      else the files without a variant.
    - configs, tokenizer and scheduler files (json, txt, sentencepiece) are always kept.
    """
    listing = sorted(set(files))
    allowed_dirs = {""} | (set(components) if components is not None else set())
    by_dir: dict[str, list[str]] = {}
    for path in listing:
        parent = str(PurePosixPath(path).parent)
        parent = "" if parent == "." else parent
        top = parent.split("/", 1)[0]
        if top not in allowed_dirs:
            continue
        by_dir.setdefault(parent, []).append(path)

    selected: list[str] = []
    for folder, paths in sorted(by_dir.items()):
        selected += [p for p in paths if p.endswith(CONFIG_SUFFIXES)]
        if folder == "" and components is not None:
            continue  # root of a pipeline repo: only model_index.json and friends
        selected += _pick_weights(paths, variant=variant, neuron=neuron)
    return sorted(set(selected))


def _pick_weights(paths: list[str], *, variant: str | None, neuron: bool) -> list[str]:
    if neuron:
        compiled = [p for p in paths if p.endswith(NEURON_SUFFIX)]
        if compiled:
            return compiled
    for suffix in WEIGHT_SUFFIXES:
        candidates = [p for p in paths if p.endswith(suffix)]
        if not candidates:
            continue
        wanted = [p for p in candidates if _variant_of(p) == variant] if variant else []
        if wanted:
            return wanted
        plain = [p for p in candidates if _variant_of(p) is None]
        if plain:
            return plain
        # Only variants exist (e.g. an fp16-only repo): take the first variant consistently.
        first = sorted({_variant_of(p) for p in candidates})[0]
        return [p for p in candidates if _variant_of(p) == first]
    return []


def pipeline_components(model_index: dict) -> list[str]:
    """Sub-folders named in a diffusers model_index.json whose component is not null."""
    return sorted(
        key
        for key, value in model_index.items()
        if not key.startswith("_") and isinstance(value, list) and len(value) == 2 and value[0] is not None
    )


def parse_model_id(model_id: str) -> tuple[str, str]:
    """Return (scheme, location): ('s3', 'bucket/prefix'), ('hf', 'org/name') or ('file', path)."""
    if model_id.startswith("s3://"):
        return "s3", model_id[len("s3://") :].strip("/")
    if model_id.startswith("hf://"):
        return "hf", model_id[len("hf://") :].strip("/")
    if model_id.startswith(("/", "./", "../", "file://")) or Path(model_id).exists():
        return "file", model_id.removeprefix("file://")
    if model_id.count("/") == 1 and " " not in model_id:
        return "hf", model_id
    raise ModelSourceError(f"--model_id {model_id!r}: expected s3://bucket/prefix, hf://org/name, org/name or a path")


# ---------------------------------------------------------------- Hugging Face


def hf_allow_patterns(
    repo_id: str, revision: str | None = None, *, variant: str | None = None, neuron: bool = False, api=None
) -> list[str]:
    """The ``allow_patterns`` to pass to ``snapshot_download`` for this repo, from its listing."""
    from huggingface_hub import HfApi, hf_hub_download

    api = api or HfApi()
    files = api.list_repo_files(repo_id, revision=revision)
    components = None
    if "model_index.json" in files:
        index_path = hf_hub_download(repo_id, "model_index.json", revision=revision)
        components = pipeline_components(json.loads(Path(index_path).read_text()))
    return select_model_files(files, components=components, variant=variant, neuron=neuron)


def download_hf(
    repo_id: str,
    destination: str | Path,
    revision: str | None = None,
    *,
    variant: str | None = None,
    neuron: bool = False,
) -> Path:
    from huggingface_hub import snapshot_download

    patterns = hf_allow_patterns(repo_id, revision, variant=variant, neuron=neuron)
    if not patterns:
        raise ModelSourceError(f"hf://{repo_id}: no loadable files found in the repo listing")
    logger.info("downloading %d files of hf://%s into %s", len(patterns), repo_id, destination)
    path = snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_dir=str(destination))
    return Path(path)


# ---------------------------------------------------------------- S3


def s3_client():
    """A boto3 S3 client; honours AWS_ENDPOINT_URL and KServe's S3_ENDPOINT / S3_USE_HTTPS."""
    import boto3

    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("S3_ENDPOINT")
    if endpoint and "://" not in endpoint:
        scheme = "https" if os.environ.get("S3_USE_HTTPS", "1") != "0" else "http"
        endpoint = f"{scheme}://{endpoint}"
    return boto3.client("s3", endpoint_url=endpoint or None)


def download_s3(
    uri_location: str,
    destination: str | Path,
    *,
    variant: str | None = None,
    neuron: bool = False,
    client=None,
    max_workers: int = 8,
) -> Path:
    """Download the selected files under s3://bucket/prefix into ``destination``."""
    bucket, _, prefix = uri_location.partition("/")
    prefix = prefix.strip("/")
    client = client or s3_client()
    key_prefix = f"{prefix}/" if prefix else ""
    keys: dict[str, str] = {}
    sizes: dict[str, int] = {}
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=key_prefix):
        for item in page.get("Contents", []):
            key = item["Key"]
            if key.endswith("/"):
                continue
            keys[key[len(key_prefix) :]] = key
            sizes[key[len(key_prefix) :]] = int(item.get("Size", -1))
    if not keys:
        raise ModelSourceError(f"s3://{uri_location}: no objects under this prefix")
    components = None
    if "model_index.json" in keys:
        body = client.get_object(Bucket=bucket, Key=keys["model_index.json"])["Body"].read()
        components = pipeline_components(json.loads(body))
    selected = select_model_files(keys, components=components, variant=variant, neuron=neuron)
    destination = Path(destination)
    logger.info("downloading %d of %d objects of s3://%s into %s", len(selected), len(keys), uri_location, destination)

    def fetch(relative: str) -> None:
        target = destination / relative
        if target.is_file() and target.stat().st_size == sizes[relative]:
            return  # complete from an earlier, interrupted attempt
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + PART_SUFFIX)
        client.download_file(bucket, keys[relative], str(part))
        os.replace(part, target)

    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        list(pool.map(fetch, selected))
    return destination


# ---------------------------------------------------------------- entry point


def _manifest(directory: Path) -> dict | None:
    try:
        return json.loads((directory / DOWNLOAD_MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _download_is_complete(directory: Path, source: dict) -> bool:
    """True when ``directory`` holds a finished download of ``source`` whose files are all still there."""
    if (directory / DOWNLOAD_INCOMPLETE).exists():
        return False
    manifest = _manifest(directory)
    if manifest is None or manifest.get("source") != source:
        return False
    for relative, size in manifest.get("files", {}).items():
        path = directory / relative
        if not path.is_file() or path.stat().st_size != size:
            logger.warning("%s: %s is missing or truncated; fetching the model again", directory, relative)
            return False
    return True


def _write_manifest(directory: Path, source: dict) -> None:
    files = {
        path.relative_to(directory).as_posix(): path.stat().st_size
        for path in sorted(directory.rglob("*"))
        if path.is_file()
        and path.name not in (DOWNLOAD_MANIFEST, DOWNLOAD_INCOMPLETE)
        and not path.name.endswith(PART_SUFFIX)
        and ".cache" not in path.relative_to(directory).parts  # huggingface_hub's own bookkeeping
    }
    temporary = directory / (DOWNLOAD_MANIFEST + PART_SUFFIX)
    temporary.write_text(json.dumps({"source": source, "files": files}, indent=1, sort_keys=True))
    os.replace(temporary, directory / DOWNLOAD_MANIFEST)


def prepare_model_dir(
    model_dir: str | Path,
    model_id: str | None = None,
    revision: str | None = None,
    *,
    variant: str | None = None,
    neuron: bool = False,
) -> Path:
    """Return a local directory holding the model, downloading ``model_id`` into ``model_dir`` if needed.

    A directory that holds a model and was not downloaded here (KServe's storage initializer
    mounts ``/mnt/models``) is used as it is. One this function downloaded is used only when the
    download finished and every file is still there; otherwise the download is resumed.
    """
    directory = Path(model_dir)
    interrupted = (directory / DOWNLOAD_INCOMPLETE).exists()
    if not model_id:
        if interrupted:
            raise ModelSourceError(
                f"--model_dir {directory} holds an interrupted download; give --model_id to fetch it again"
            )
        if has_model(directory):
            return directory
        raise ModelSourceError(
            f"--model_dir {directory} holds no model (no model_index.json or config.json) and no --model_id was given"
        )
    scheme, location = parse_model_id(model_id)
    if scheme == "file":
        if not has_model(location):
            raise ModelSourceError(f"--model_id {model_id}: no model_index.json or config.json there")
        return Path(location)
    source = {"model_id": model_id, "revision": revision, "variant": variant, "neuron": neuron}
    if _download_is_complete(directory, source):
        return directory
    if has_model(directory) and not interrupted and _manifest(directory) is None:
        return directory  # a model put here by someone else (a mounted storageUri): not ours to fetch
    directory.mkdir(parents=True, exist_ok=True)
    (directory / DOWNLOAD_INCOMPLETE).write_text(json.dumps(source))
    if scheme == "s3":
        download_s3(location, directory, variant=variant, neuron=neuron)
    else:
        download_hf(location, directory, revision, variant=variant, neuron=neuron)
    if not has_model(directory):
        raise ModelSourceError(f"--model_id {model_id}: downloaded files hold no model_index.json or config.json")
    _write_manifest(directory, source)
    (directory / DOWNLOAD_INCOMPLETE).unlink()
    return directory
