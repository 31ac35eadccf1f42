"""Compile a Stable Diffusion pipeline for AWS Neuron at fixed shapes and upload it to S3.

Neuron runs static graphs: the text encoder, UNet and VAE are traced and compiled for one
height, width and batch size, which takes tens of minutes. Doing it once, in a Job
(deploy/neuron-compile/), lets every serving pod on inf2 or trn1 load the compiled artefacts
from its ``storageUri`` instead of compiling at start-up::

    python -m modelbuild.neuron_compile --model_id stabilityai/stable-diffusion-2-1-base \\
        --output /work/sd21-neuron --height 512 --width 512 --batch_size 1 \\
        --s3_uri s3://my-bucket/sd21/neuron/sd21-base-512x512-bs1/

The export goes through optimum-neuron (``NeuronStableDiffusionPipeline.from_pretrained(...,
export=True)`` then ``save_pretrained``), which needs the Neuron SDK; it is imported only when
the export runs, so ``--help`` and the S3 upload work anywhere. Besides the pipeline, the output
holds ``neuron_compile.json``: the shapes and compiler settings, uploaded last, so a prefix
that has it is complete.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOG = logging.getLogger("modelbuild.neuron_compile")

MANIFEST_NAME = "neuron_compile.json"
DEFAULT_PIPELINE_CLASS = "NeuronStableDiffusionPipeline"
AUTO_CAST_CHOICES = ("none", "matmul", "all")
AUTO_CAST_TYPE_CHOICES = ("bf16", "fp16", "tf32")
INSTANCE_TYPE_CHOICES = ("inf2", "trn1", "trn1n", "trn2")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_MISSING_SDK = 2


class MissingNeuronSDKError(RuntimeError):
    """optimum-neuron (and the Neuron SDK under it) cannot be imported."""


class UploadError(RuntimeError):
    """The compiled model could not be uploaded to S3."""


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # "" or ending with "/"

    def key_for(self, relative: str) -> str:
        return f"{self.prefix}{relative}"

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def parse_s3_uri(uri: str) -> S3Location:
    """Split ``s3://bucket/some/prefix`` into bucket and a prefix that ends with ``/``."""
    if not uri.startswith("s3://"):
        raise ValueError(f"expected an s3:// URI, got {uri!r}")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
    prefix = prefix.strip("/")
    return S3Location(bucket=bucket, prefix=f"{prefix}/" if prefix else "")


def _s3_uri(value: str) -> str:
    try:
        parse_s3_uri(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    return value


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return number


def _image_side(value: str) -> int:
    number = _positive_int(value)
    if number % 8:
        raise argparse.ArgumentTypeError(f"image sides must be multiples of 8 (the VAE's scale), got {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m modelbuild.neuron_compile",
        description="Compile a Stable Diffusion pipeline for AWS Neuron at fixed shapes; optionally upload it to S3.",
    )
    parser.add_argument("--model_id", required=True, help="Hugging Face repo id or local diffusers directory.")
    parser.add_argument("--revision", default=None, help="Hugging Face revision (branch, tag, commit).")
    parser.add_argument("--output", required=True, type=Path, help="Directory for the compiled pipeline (empty).")
    parser.add_argument("--height", type=_image_side, default=512, help="Image height the graphs are compiled for.")
    parser.add_argument("--width", type=_image_side, default=512, help="Image width the graphs are compiled for.")
    parser.add_argument("--batch_size", type=_positive_int, default=1, help="Prompts per pipeline call.")
    parser.add_argument("--num_images_per_prompt", type=_positive_int, default=1)
    parser.add_argument("--auto_cast", choices=AUTO_CAST_CHOICES, default="matmul", help="Operations cast down.")
    parser.add_argument("--auto_cast_type", choices=AUTO_CAST_TYPE_CHOICES, default="bf16", help="Type cast to.")
    parser.add_argument(
        "--instance_type",
        choices=INSTANCE_TYPE_CHOICES,
        default=None,
        help="Compilation target; default: the instance this runs on (inf2 and trn1 share one target).",
    )
    parser.add_argument("--optlevel", choices=("1", "2", "3"), default="2", help="neuronx-cc optimization level.")
    parser.add_argument(
        "--pipeline_class",
        default=DEFAULT_PIPELINE_CLASS,
        help="optimum.neuron pipeline class (e.g. NeuronStableDiffusionXLPipeline for SDXL).",
    )
    parser.add_argument(
        "--s3_uri", type=_s3_uri, default=None, help="Upload the output here (s3://bucket/prefix/) when given."
    )
    parser.add_argument("--log_level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return parser


def _load_pipeline_class(name: str) -> Any:
    try:
        import optimum.neuron as optimum_neuron  # imported here: the Neuron SDK is optional
    except ImportError as err:
        raise MissingNeuronSDKError(
            f"cannot import optimum.neuron ({err}). Compiling for Neuron needs optimum-neuron and the AWS "
            "Neuron SDK (torch-neuronx, neuronx-cc): run this in the Neuron image (docker/Dockerfile.neuron), "
            "e.g. through the Job in deploy/neuron-compile/."
        ) from err
    pipeline_class = getattr(optimum_neuron, name, None)
    if pipeline_class is None:
        raise MissingNeuronSDKError(f"optimum.neuron has no pipeline class {name!r}")
    return pipeline_class


def export_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for ``<Pipeline>.from_pretrained(model_id, **kwargs)``."""
    kwargs: dict[str, Any] = {
        "export": True,
        "batch_size": args.batch_size,
        "height": args.height,
        "width": args.width,
        "num_images_per_prompt": args.num_images_per_prompt,
        "auto_cast": args.auto_cast,
        "auto_cast_type": args.auto_cast_type,
        "optlevel": args.optlevel,
    }
    if args.revision:
        kwargs["revision"] = args.revision
    if args.instance_type:
        kwargs["instance_type"] = args.instance_type
    return kwargs


def _check_output_dir(output: Path) -> None:
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise FileExistsError(f"--output {output} must be a new or empty directory")


def compile_pipeline(args: argparse.Namespace) -> Path:
    """Export the pipeline for Neuron into ``args.output`` and write the manifest beside it."""
    pipeline_class = _load_pipeline_class(args.pipeline_class)
    _check_output_dir(args.output)
    kwargs = export_kwargs(args)
    LOG.info("compiling %s with %s.from_pretrained(%s)", args.model_id, args.pipeline_class, kwargs)
    started = time.monotonic()
    pipeline = pipeline_class.from_pretrained(args.model_id, **kwargs)
    args.output.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(args.output)
    elapsed = time.monotonic() - started
    manifest = {
        "model_id": args.model_id,
        "revision": args.revision,
        "pipeline_class": args.pipeline_class,
        "height": args.height,
        "width": args.width,
        "batch_size": args.batch_size,
        "num_images_per_prompt": args.num_images_per_prompt,
        "auto_cast": kwargs["auto_cast"],
        "auto_cast_type": args.auto_cast_type,
        "optlevel": args.optlevel,
        "instance_type": args.instance_type,
        "compile_seconds": round(elapsed, 1),
    }
    (args.output / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    LOG.info("compiled in %.0f s into %s", elapsed, args.output)
    return args.output


def _files_to_upload(local_dir: Path) -> list[Path]:
    files = sorted(path for path in local_dir.rglob("*") if path.is_file())
    # The manifest goes last: its presence marks a complete upload.
    return sorted(files, key=lambda path: path.name == MANIFEST_NAME)


def upload_directory(local_dir: Path, s3_uri: str, client: Any = None) -> list[str]:
    """Upload every file under ``local_dir`` to ``s3_uri``; return the keys, in upload order."""
    location = parse_s3_uri(s3_uri)
    files = _files_to_upload(local_dir)
    if not files:
        raise UploadError(f"nothing to upload: {local_dir} has no files")
    if client is None:
        import boto3  # imported here: `--help` and the export do not need it

        client = boto3.client("s3")
    keys = []
    for path in files:
        key = location.key_for(path.relative_to(local_dir).as_posix())
        LOG.info("uploading %s to s3://%s/%s", path, location.bucket, key)
        try:
            client.upload_file(str(path), location.bucket, key)
        except Exception as err:  # boto3 raises several unrelated exception types
            raise UploadError(f"uploading {path} to s3://{location.bucket}/{key} failed: {err}") from err
        keys.append(key)
    return keys


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        output = compile_pipeline(args)
        if args.s3_uri:
            keys = upload_directory(output, args.s3_uri)
            LOG.info("uploaded %d files to %s", len(keys), parse_s3_uri(args.s3_uri))
    except MissingNeuronSDKError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_MISSING_SDK
    except (FileExistsError, UploadError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
