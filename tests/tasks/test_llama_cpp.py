"""The llama.cpp backend served for real, on a tiny GGUF model built here.

The whole text-generation protocol spec (``test_text_generation.py``: v2, v1, gRPC, OpenAI
completions and chat, streaming, every 400) runs again against a server whose model directory
holds only a GGUF file (the backend is chosen automatically), so routes, parameters and errors
are the transformers path's by construction. Below them: the ``openai`` client over HTTP, the
same greedy answer as transformers for the same weights, batched decoding, backend choice and
the container CPU limit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.tasks import test_text_generation as spec
from tests.tasks.conftest import ROOT, text_generation_server


def _require_llama_cpp():
    try:
        import llama_cpp  # noqa: F401
    except ImportError as error:
        message = f"llama-cpp-python is not installed (pip install '.[llama]'): {error}"
        if os.environ.get("CI_REQUIRE_SYSTEM_TOOLS") == "1":
            pytest.fail(message + " and CI_REQUIRE_SYSTEM_TOOLS=1", pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="module")
def gguf_model(tmp_path_factory) -> Path:
    """The tiny Llama of ``tiny_models`` (seed 0) as f32 GGUF: the same weights as the transformers test model."""
    _require_llama_cpp()
    from modelbuild.tiny_models import build_gguf_lm

    return build_gguf_lm(tmp_path_factory.mktemp("tiny-gguf"), seed=0, gguf_type="f32")


@pytest.fixture(scope="module")
def generator(gguf_model, tmp_path_factory):
    """A server on the GGUF directory with no --backend: auto picks llama.cpp."""
    log_path = tmp_path_factory.mktemp("llama-logs") / "server.log"
    env = {"OMP_NUM_THREADS": "1", "PREDICTOR_BACKEND": None}
    with text_generation_server(gguf_model.parent, log_path, ["--max_batch_size", "4", "--batch_wait_ms", "50"], env) as server:
        yield server


# The transformers path's protocol spec, run unchanged against the llama.cpp server.
for _name in dir(spec):
    if _name.startswith("test_"):
        globals()[_name] = getattr(spec, _name)


def test_server_runs_llama_cpp(generator):
    assert "llama.cpp:" in generator.log_path.read_text(errors="replace")


# ----------------------------------------------------------------------------- the openai client


@pytest.fixture(scope="module")
def client(generator):
    from openai import OpenAI

    return OpenAI(base_url=f"{generator.url}/openai/v1", api_key="unused", max_retries=0, timeout=60)


def test_openai_client_completion_and_stream(client):
    completion = client.completions.create(model="llama", prompt="hello from openai", max_tokens=12, temperature=0)
    text = completion.choices[0].text
    assert len(text) == 12 and completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 12
    pieces = [
        chunk.choices[0].text
        for chunk in client.completions.create(
            model="llama", prompt="hello from openai", max_tokens=12, temperature=0, stream=True
        )
        if chunk.choices
    ]
    assert "".join(pieces) == text and len([p for p in pieces if p]) > 1


def test_openai_client_chat_and_stream(client):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]
    chat = client.chat.completions.create(model="llama", messages=messages, max_tokens=10)
    content = chat.choices[0].message.content
    assert chat.choices[0].message.role == "assistant" and len(content) == 10
    stream = client.chat.completions.create(
        model="llama", messages=messages, max_tokens=10, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == content
    assert chunks[-1].usage.completion_tokens == 10


def test_openai_client_sees_bad_parameters_as_400(client):
    import openai

    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model="llama", prompt="x", max_tokens=1000)
    assert "context" in str(raised.value)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])


# ----------------------------------------------------------------------------- the same model


def test_greedy_text_equals_transformers_on_the_same_weights(generator):
    """The converted f32 GGUF decodes greedily to the transformers model's text (conversion and decoding are right)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modelbuild.tiny_models import build_causal_lm

    hf_dir = build_causal_lm(generator.log_path.parent / "hf", seed=0)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    prompts = ["the quick brown fox", "a", "<|user|>\nsame</s>\n<|assistant|>\n"]
    with torch.inference_mode():
        expected = []
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            output = model.generate(ids, max_new_tokens=20, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            expected.append(tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True))
    texts, _ = spec._texts(spec._v2(generator, prompts, {"max_tokens": 20, "temperature": 0}))
    assert texts == expected


def test_concurrent_rows_decode_together_and_keep_their_own_answers(generator):
    """Four requests share one llama_decode per step (one sequence each); each keeps its solo answer."""
    prompts = [f"row {i} " + "x" * (3 * i) for i in range(4)]
    alone = [spec._texts(spec._v2(generator, [p], {"max_tokens": 16}))[0][0] for p in prompts]
    seeded = {"max_tokens": 16, "temperature": 0.8, "seed": 11}
    alone_sampled = spec._texts(spec._v2(generator, [prompts[0]], seeded))[0][0]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda p: spec._texts(spec._v2(generator, [p], {"max_tokens": 16}))[0][0], prompts))
    assert together == alone
    batched = spec._texts(spec._v2(generator, prompts[:1] * 3, seeded))[0]
    assert batched[0] == alone_sampled  # row 0 keeps seed 11's text beside rows seeded 12 and 13
    assert len(set(batched)) > 1


# ----------------------------------------------------------------------------- choice and threads


def test_backend_choice(tmp_path, gguf_model):
    from predictor.backends import select_backend

    assert select_backend(str(gguf_model.parent), "cpu") == "llama.cpp"
    assert select_backend(str(gguf_model.parent), "cpu", "llama.cpp") == "llama.cpp"
    with pytest.raises(ValueError, match="needs a .gguf file"):
        select_backend(str(tmp_path), "cpu", "llama.cpp")
    with pytest.raises(ValueError, match="only GGUF weights"):
        select_backend(str(gguf_model.parent), "cpu", "transformers")
    (tmp_path / "config.json").write_text("{}")
    assert select_backend(str(tmp_path), "cpu") == "transformers"
    assert select_backend(str(tmp_path), "cuda") == "transformers"  # no vLLM installed here


def test_gguf_directory_is_a_text_generation_model(gguf_model):
    from predictor.storage import has_model
    from predictor.tasks import infer_task

    assert has_model(gguf_model.parent) and infer_task(gguf_model.parent) == "text-generation"


@pytest.mark.parametrize(
    ("files", "cpus"),
    [
        ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs: two threads
        ({"cpu.max": "100000 100000\n"}, 1),
        ({"cpu.max": "max 100000\n"}, None),  # unlimited: every usable CPU
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),  # cgroup v1
        ({}, None),
    ],
)
def test_threads_follow_the_container_cpu_limit(tmp_path, monkeypatch, files, cpus):
    from predictor.backends import llama_cpp as llama_cpp_backend

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(llama_cpp_backend.os, "sched_getaffinity", lambda pid: set(range(8)))
    real = llama_cpp_backend._cgroup_quota
    monkeypatch.setattr(llama_cpp_backend, "_cgroup_quota", lambda root=str(tmp_path): real(root))
    assert llama_cpp_backend.container_cpus() == (cpus or 8)


@pytest.mark.parametrize(("gguf_type", "described"), [("f16", "F16"), ("q4_0", "Q4_0")])
def test_tiny_models_cli_writes_a_gguf_llama_cpp_loads(tmp_path, gguf_type, described):
    _require_llama_cpp()
    completed = subprocess.run(
        [sys.executable, "-m", "modelbuild.tiny_models", str(tmp_path), "--task", "text-generation",
         "--format", "gguf", "--gguf_type", gguf_type],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    from predictor.backends.llama_cpp import LlamaCppBackend, gguf_file

    backend = LlamaCppBackend(gguf_file(tmp_path), max_sequences=1, threads=1)
    assert described in backend.model.desc()
    assert backend.tokenizer.chat_template and backend.context_length == 256
