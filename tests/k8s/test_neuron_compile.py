"""The Neuron compile command: what it asks optimum-neuron for, and what it uploads to S3.

optimum-neuron and the Neuron SDK do not install here, so a fake ``optimum.neuron`` module
records the calls; the S3 upload goes to a local moto server.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelbuild import neuron_compile
from modelbuild.neuron_compile import MANIFEST_NAME, main, parse_s3_uri, upload_directory

REPO_ROOT = Path(__file__).resolve().parents[2]


class FakeNeuronPipeline:
    """Stands in for optimum.neuron.NeuronStableDiffusionPipeline."""

    calls: list[tuple[str, dict[str, Any]]] = []
    saved_to: list[Path] = []

    @classmethod
    def from_pretrained(cls, model_id: str, **kwargs: Any) -> FakeNeuronPipeline:
        cls.calls.append((model_id, kwargs))
        return cls()

    def save_pretrained(self, directory: Path) -> None:
        directory = Path(directory)
        self.saved_to.append(directory)
        (directory / "unet").mkdir(parents=True)
        (directory / "unet" / "model.neuron").write_bytes(b"\x00neff")
        (directory / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')


@pytest.fixture
def fake_optimum_neuron(monkeypatch: pytest.MonkeyPatch) -> type[FakeNeuronPipeline]:
    FakeNeuronPipeline.calls = []
    FakeNeuronPipeline.saved_to = []
    optimum = types.ModuleType("optimum")
    neuron = types.ModuleType("optimum.neuron")
    neuron.NeuronStableDiffusionPipeline = FakeNeuronPipeline  # type: ignore[attr-defined]
    optimum.neuron = neuron  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "optimum", optimum)
    monkeypatch.setitem(sys.modules, "optimum.neuron", neuron)
    return FakeNeuronPipeline


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    from tests.servers import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A boto3 S3 client on the moto server; boto3 clients made by the code under test use it too."""
    import boto3

    for name, value in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    return client


def _args(output: Path, *extra: str) -> list[str]:
    return ["--model_id", "stabilityai/stable-diffusion-2-1-base", "--output", str(output), *extra]


def test_export_asks_optimum_neuron_for_a_static_compile_at_the_requested_shapes(
    fake_optimum_neuron: type[FakeNeuronPipeline], tmp_path: Path
) -> None:
    output = tmp_path / "sd21-neuron"
    rc = main(_args(output, "--height", "512", "--width", "768", "--batch_size", "2", "--revision", "main"))
    assert rc == 0
    ((model_id, kwargs),) = fake_optimum_neuron.calls
    assert model_id == "stabilityai/stable-diffusion-2-1-base"
    assert kwargs == {
        "export": True,
        "batch_size": 2,
        "height": 512,
        "width": 768,
        "num_images_per_prompt": 1,
        "auto_cast": "matmul",
        "auto_cast_type": "bf16",
        "optlevel": "2",
        "revision": "main",
    }
    assert fake_optimum_neuron.saved_to == [output]


def test_export_writes_a_manifest_of_the_compiled_shapes(
    fake_optimum_neuron: type[FakeNeuronPipeline], tmp_path: Path
) -> None:
    output = tmp_path / "out"
    assert main(_args(output, "--instance_type", "inf2", "--auto_cast", "all", "--auto_cast_type", "fp16")) == 0
    manifest = json.loads((output / MANIFEST_NAME).read_text())
    assert manifest["height"] == manifest["width"] == 512
    assert manifest["batch_size"] == 1
    assert (manifest["instance_type"], manifest["auto_cast"], manifest["auto_cast_type"]) == ("inf2", "all", "fp16")
    assert fake_optimum_neuron.calls[0][1]["instance_type"] == "inf2"


def test_a_missing_neuron_sdk_is_one_clear_line_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "optimum.neuron", None)  # makes the import raise ImportError
    rc = main(_args(tmp_path / "out"))
    err = capsys.readouterr().err
    assert rc == neuron_compile.EXIT_MISSING_SDK
    assert err.startswith("error: cannot import optimum.neuron")
    assert "Neuron image" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_the_cli_without_the_sdk_exits_2_with_the_message(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['optimum.neuron'] = None; "
        "from modelbuild.neuron_compile import main; sys.exit(main(sys.argv[1:]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *_args(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "optimum-neuron" in result.stderr


def test_help_works_without_the_sdk() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "modelbuild.neuron_compile", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    assert "--s3_uri" in result.stdout and "--height" in result.stdout


@pytest.mark.parametrize(
    "bad",
    [
        ["--height", "500"],  # not a multiple of 8
        ["--batch_size", "0"],
        ["--s3_uri", "https://bucket/prefix"],
        ["--s3_uri", "s3:///prefix"],
        ["--auto_cast", "everything"],
    ],
)
def test_invalid_arguments_are_rejected_before_compiling(
    bad: list[str], fake_optimum_neuron: type[FakeNeuronPipeline], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(_args(tmp_path / "out", *bad))
    assert exc.value.code == 2
    assert fake_optimum_neuron.calls == []


def test_a_non_empty_output_directory_is_refused(
    fake_optimum_neuron: type[FakeNeuronPipeline], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "stale.neff").write_text("old")
    assert main(_args(tmp_path)) == neuron_compile.EXIT_FAILED
    assert "must be a new or empty directory" in capsys.readouterr().err
    assert fake_optimum_neuron.calls == []


def test_s3_uris_split_into_bucket_and_prefix() -> None:
    assert parse_s3_uri("s3://models/sd21/neuron/x/") == parse_s3_uri("s3://models/sd21/neuron/x")
    location = parse_s3_uri("s3://models/sd21/neuron/x")
    assert (location.bucket, location.prefix) == ("models", "sd21/neuron/x/")
    assert parse_s3_uri("s3://models").prefix == ""


def test_compile_then_upload_puts_every_file_under_the_prefix_manifest_last(
    fake_optimum_neuron: type[FakeNeuronPipeline], s3: Any, tmp_path: Path
) -> None:
    s3.create_bucket(Bucket="models")
    output = tmp_path / "sd21-neuron"
    assert main(_args(output, "--s3_uri", "s3://models/sd21/neuron/sd21-base-512x512-bs1/")) == 0
    listed = s3.list_objects_v2(Bucket="models", Prefix="sd21/neuron/")["Contents"]
    keys = {obj["Key"] for obj in listed}
    prefix = "sd21/neuron/sd21-base-512x512-bs1/"
    assert keys == {f"{prefix}unet/model.neuron", f"{prefix}model_index.json", f"{prefix}{MANIFEST_NAME}"}
    body = s3.get_object(Bucket="models", Key=f"{prefix}unet/model.neuron")["Body"].read()
    assert body == b"\x00neff"
    manifest = json.loads(s3.get_object(Bucket="models", Key=f"{prefix}{MANIFEST_NAME}")["Body"].read())
    assert manifest["model_id"] == "stabilityai/stable-diffusion-2-1-base"


def test_upload_order_ends_with_the_manifest(s3: Any, tmp_path: Path) -> None:
    s3.create_bucket(Bucket="ordered")
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "weights.bin").write_bytes(b"w")
    (tmp_path / MANIFEST_NAME).write_text("{}")
    (tmp_path / "a.json").write_text("{}")
    keys = upload_directory(tmp_path, "s3://ordered/p")
    assert keys == ["p/a.json", "p/z/weights.bin", f"p/{MANIFEST_NAME}"]


def test_an_upload_to_a_missing_bucket_fails_with_a_clear_error(
    fake_optimum_neuron: type[FakeNeuronPipeline], s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(_args(tmp_path / "out", "--s3_uri", "s3://no-such-bucket/x"))
    assert rc == neuron_compile.EXIT_FAILED
    assert "error: uploading" in capsys.readouterr().err


def test_uploading_an_empty_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(neuron_compile.UploadError, match="nothing to upload"):
        upload_directory(tmp_path, "s3://bucket/prefix", client=object())
