"""Model storage: select only what the pipeline loads, from Hugging Face listings and from S3."""

import json
import sys
import types

import pytest

from predictor import storage
from predictor.storage import ModelSourceError, parse_model_id, pipeline_components, select_model_files
from tests.predictor.harness import free_port

# The shape of a real Stable Diffusion 2.1 repo: root checkpoints, several formats and variants.
SD21_LISTING = [
    ".gitattributes",
    "README.md",
    "model_index.json",
    "v2-1_768-ema-pruned.ckpt",
    "v2-1_768-ema-pruned.safetensors",
    "v2-1_768-nonema-pruned.safetensors",
    "feature_extractor/preprocessor_config.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "text_encoder/model.fp16.safetensors",
    "text_encoder/pytorch_model.bin",
    "text_encoder/flax_model.msgpack",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.bin",
    "unet/diffusion_flax_model.msgpack",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.fp16.safetensors",
    "vae/diffusion_pytorch_model.bin",
]
SD21_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.8.0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
COMPONENTS = pipeline_components(SD21_INDEX)
CONFIGS = [
    "feature_extractor/preprocessor_config.json",
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "vae/config.json",
]


def test_components_are_the_non_null_entries_of_model_index():
    assert COMPONENTS == ["feature_extractor", "scheduler", "text_encoder", "tokenizer", "unet", "vae"]


def test_default_selection_is_configs_plus_one_safetensors_per_component():
    selected = select_model_files(SD21_LISTING, components=COMPONENTS)
    assert selected == sorted(
        CONFIGS
        + [
            "text_encoder/model.safetensors",
            "unet/diffusion_pytorch_model.safetensors",
            "vae/diffusion_pytorch_model.safetensors",
        ]
    )


def test_root_checkpoints_bin_flax_and_readme_are_never_downloaded():
    selected = set(select_model_files(SD21_LISTING, components=COMPONENTS, variant="fp16"))
    for skipped in (
        "v2-1_768-ema-pruned.ckpt",
        "v2-1_768-ema-pruned.safetensors",
        "unet/diffusion_pytorch_model.bin",
        "unet/diffusion_flax_model.msgpack",
        "README.md",
        ".gitattributes",
    ):
        assert skipped not in selected


def test_fp16_variant_is_chosen_when_asked_for_and_present():
    selected = select_model_files(SD21_LISTING, components=COMPONENTS, variant="fp16")
    weights = [path for path in selected if path.endswith(".safetensors")]
    assert weights == [
        "text_encoder/model.fp16.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
    ]


def test_bin_weights_are_used_only_when_no_safetensors_exist():
    listing = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.bin"]
    assert "unet/diffusion_pytorch_model.bin" in select_model_files(listing, components=["unet"])


def test_neuron_selection_takes_compiled_artefacts_instead_of_weights():
    listing = ["model_index.json", "unet/config.json", "unet/model.neuron", "unet/diffusion_pytorch_model.safetensors"]
    assert select_model_files(listing, components=["unet"], neuron=True) == [
        "model_index.json",
        "unet/config.json",
        "unet/model.neuron",
    ]


def test_single_model_repo_takes_root_files():
    listing = ["config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json", "onnx/model.onnx"]
    assert select_model_files(listing) == ["config.json", "model.safetensors", "tokenizer.json"]


@pytest.mark.parametrize(
    "model_id, expected",
    [
        ("s3://bucket/models/sd21", ("s3", "bucket/models/sd21")),
        ("hf://stabilityai/stable-diffusion-2-1", ("hf", "stabilityai/stable-diffusion-2-1")),
        ("stabilityai/stable-diffusion-2-1", ("hf", "stabilityai/stable-diffusion-2-1")),
    ],
)
def test_model_id_schemes(model_id, expected):
    assert parse_model_id(model_id) == expected


def test_unrecognised_model_id_is_a_clear_error():
    with pytest.raises(ModelSourceError, match="expected s3://"):
        parse_model_id("not a model id at all")


def test_hf_download_asks_snapshot_download_for_exactly_the_selected_patterns(monkeypatch, tmp_path):
    """No network: the Hub client is replaced by a fake that serves the SD 2.1 listing."""
    calls = {}
    index_file = tmp_path / "model_index.json"
    index_file.write_text(json.dumps(SD21_INDEX))

    class FakeApi:
        def list_repo_files(self, repo_id, revision=None):
            calls["listed"] = (repo_id, revision)
            return SD21_LISTING

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None, local_dir=None):
        calls["snapshot"] = (repo_id, revision, allow_patterns, local_dir)
        return local_dir

    fake_hub = types.SimpleNamespace(
        HfApi=FakeApi,
        hf_hub_download=lambda repo_id, filename, revision=None: str(index_file),
        snapshot_download=fake_snapshot_download,
    )
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake_hub)
    storage.download_hf("stabilityai/stable-diffusion-2-1", tmp_path / "out", "main", variant="fp16")
    repo, revision, patterns, local_dir = calls["snapshot"]
    assert (repo, revision, local_dir) == ("stabilityai/stable-diffusion-2-1", "main", str(tmp_path / "out"))
    assert patterns == select_model_files(SD21_LISTING, components=COMPONENTS, variant="fp16")
    assert len(patterns) == len(CONFIGS) + 3


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    import boto3

    for key, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_endpoint,
    }.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="models")
    return client


def upload_dir(client, directory, prefix):
    for path in directory.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), "models", f"{prefix}/{path.relative_to(directory).as_posix()}")


def test_s3_download_fetches_only_selected_objects(s3, tmp_path):
    for name in SD21_LISTING:
        body = json.dumps(SD21_INDEX).encode() if name == "model_index.json" else b"x"
        s3.put_object(Bucket="models", Key=f"sd21/{name}", Body=body)
    storage.download_s3("models/sd21", tmp_path / "out")
    downloaded = sorted(
        p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file()
    )
    assert downloaded == select_model_files(SD21_LISTING, components=COMPONENTS)


def test_s3_model_id_prepares_a_loadable_pipeline(s3, tiny_model, tmp_path):
    from diffusers import StableDiffusionPipeline

    upload_dir(s3, tiny_model, "tiny")
    model_dir = storage.prepare_model_dir(tmp_path / "mnt", "s3://models/tiny")
    pipeline = StableDiffusionPipeline.from_pretrained(model_dir)
    assert pipeline.unet is not None and pipeline.tokenizer is not None


def test_empty_s3_prefix_is_a_clear_error(s3, tmp_path):
    with pytest.raises(ModelSourceError, match="no objects"):
        storage.download_s3("models/nothing-here", tmp_path)


def test_local_model_dir_is_used_as_is(tiny_model):
    assert storage.prepare_model_dir(tiny_model, "s3://never/used") == tiny_model


def test_missing_model_and_no_model_id_is_a_clear_error(tmp_path):
    with pytest.raises(ModelSourceError, match="holds no model"):
        storage.prepare_model_dir(tmp_path)


# ----------------------------------------------------------------------------- what is downloaded is loaded


@pytest.fixture(scope="module")
def tiny_model_with_fp16(tmp_path_factory):
    """A repo laid out like the hub's: plain float32 weights plus an ``fp16`` variant of each."""
    from modelbuild.tiny import build_tiny_sd

    directory = tmp_path_factory.mktemp("tiny-sd-fp16")
    build_tiny_sd(directory)
    build_tiny_sd(directory, variant="fp16")
    return directory


@pytest.fixture(scope="module")
def tiny_model_fp16_only(tmp_path_factory):
    from modelbuild.tiny import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd-fp16-only"), variant="fp16")


@pytest.mark.parametrize(
    "device, dtype, variant",
    [("cuda", "auto", "fp16"), ("cuda", "float16", "fp16"), ("cuda", "float32", None), ("cuda", "bfloat16", None),
     ("cpu", "auto", None), ("cpu", "float16", "fp16"), ("neuron", "auto", None)],
)  # fmt: skip
def test_weights_variant_per_device_and_dtype(device, dtype, variant):
    assert storage.weights_variant(device, dtype) == variant


def _generate_one(model_dir, device="cpu", dtype="auto"):
    from predictor.backends.diffusers import DiffusersBackend
    from predictor.tasks.text_to_image import ImageParams

    backend = DiffusersBackend(str(model_dir), device, dtype=dtype)
    (image,) = backend.generate(["a cat"], [""], ImageParams(2, 7.5, 64, 64), [1])
    return image


def test_cuda_choice_downloads_fp16_from_s3_and_the_same_files_load(s3, tiny_model_with_fp16, tmp_path):
    """The CUDA default (dtype auto) fetches only *.fp16.safetensors; loading must then use that variant.

    The device here is the CPU: the contract under test is the choice (device, dtype) -> files ->
    ``from_pretrained(variant=...)``, not CUDA itself.
    """
    upload_dir(s3, tiny_model_with_fp16, "tiny-fp16")
    variant = storage.weights_variant("cuda", "auto")
    model_dir = storage.prepare_model_dir(tmp_path / "mnt", "s3://models/tiny-fp16", variant=variant)
    weights = sorted(p.name for p in model_dir.rglob("*.safetensors"))
    assert weights and all(".fp16." in name for name in weights), weights
    assert _generate_one(model_dir).size == (64, 64)  # loads the fp16 files (upcast to float32 here)


def test_local_fp16_only_pipeline_loads_on_the_cpu(tiny_model_fp16_only):
    assert _generate_one(tiny_model_fp16_only).size == (64, 64)


def test_server_serves_a_local_fp16_only_pipeline(tiny_model_fp16_only, tmp_path):
    from tests.predictor.harness import start_server, stop_server, v2_body

    server = start_server(tiny_model_fp16_only, tmp_path, "--device", "cpu", "--default_steps", "2")
    try:
        import requests

        response = requests.post(f"{server.http}/v2/models/sd/infer", json=v2_body(["a cat"]), timeout=120)
        assert response.status_code == 200, response.text
    finally:
        stop_server(server)


def test_local_weights_variant_follows_what_is_on_disk(tiny_model_with_fp16, tiny_model_fp16_only, tiny_model):
    assert storage.local_weights_variant(tiny_model_with_fp16, "fp16") == "fp16"
    assert storage.local_weights_variant(tiny_model_with_fp16, None) is None
    assert storage.local_weights_variant(tiny_model_fp16_only, None) == "fp16"
    assert storage.local_weights_variant(tiny_model, "fp16") is None


# ----------------------------------------------------------------------------- interrupted downloads


class FailingAfter:
    """An S3 client whose connection drops after ``count`` downloads (as a killed pod's would)."""

    def __init__(self, client, count: int):
        self.client, self.count, self.downloaded = client, count, []

    def __getattr__(self, name):
        return getattr(self.client, name)

    def download_file(self, bucket, key, filename):
        if len(self.downloaded) >= self.count:
            with open(filename, "wb") as partial:  # a few bytes landed before the connection dropped
                partial.write(b"\0" * 7)
            raise ConnectionError("connection reset by peer")
        self.downloaded.append(key)
        return self.client.download_file(bucket, key, filename)


class Counting(FailingAfter):
    def __init__(self, client):
        super().__init__(client, 10**9)


def _weights(directory):
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*.safetensors"))


def test_interrupted_s3_download_is_resumed_not_taken_for_a_model(s3, tiny_model, tmp_path, monkeypatch):
    upload_dir(s3, tiny_model, "tiny")
    destination = tmp_path / "mnt"
    flaky = FailingAfter(s3, count=3)
    monkeypatch.setattr(storage, "s3_client", lambda: flaky)
    with pytest.raises(ConnectionError):
        storage.prepare_model_dir(destination, "s3://models/tiny")
    assert (destination / "model_index.json").is_file()  # looks like a model, but is not complete
    fetched_first = len(flaky.downloaded)

    again = Counting(s3)
    monkeypatch.setattr(storage, "s3_client", lambda: again)
    model_dir = storage.prepare_model_dir(destination, "s3://models/tiny")
    assert _weights(model_dir) == _weights(tiny_model)
    assert not list(model_dir.rglob("*.part"))
    listing = [p.relative_to(tiny_model).as_posix() for p in tiny_model.rglob("*") if p.is_file()]
    components = pipeline_components(json.loads((tiny_model / "model_index.json").read_text()))
    expected = len(select_model_files(listing, components=components))
    assert len(again.downloaded) == expected - fetched_first  # what was complete is kept
    assert _generate_one(model_dir).size == (64, 64)

    untouched = Counting(s3)
    monkeypatch.setattr(storage, "s3_client", lambda: untouched)
    assert storage.prepare_model_dir(destination, "s3://models/tiny") == destination
    assert untouched.downloaded == []  # a finished download is not fetched again


def test_a_weight_file_lost_after_the_download_is_fetched_again(s3, tiny_model, tmp_path, monkeypatch):
    upload_dir(s3, tiny_model, "tiny")
    destination = storage.prepare_model_dir(tmp_path / "mnt", "s3://models/tiny")
    (destination / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    again = Counting(s3)
    monkeypatch.setattr(storage, "s3_client", lambda: again)
    storage.prepare_model_dir(destination, "s3://models/tiny")
    assert again.downloaded == ["tiny/unet/diffusion_pytorch_model.safetensors"]


def test_interrupted_download_without_model_id_is_a_clear_error(s3, tiny_model, tmp_path, monkeypatch):
    upload_dir(s3, tiny_model, "tiny")
    monkeypatch.setattr(storage, "s3_client", lambda: FailingAfter(s3, count=2))
    with pytest.raises(ConnectionError):
        storage.prepare_model_dir(tmp_path / "mnt", "s3://models/tiny")
    with pytest.raises(ModelSourceError, match="interrupted download"):
        storage.prepare_model_dir(tmp_path / "mnt")
