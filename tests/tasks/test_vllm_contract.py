"""The vLLM backend's contract, served for real with a stand-in ``vllm`` package (``fake_vllm/``).

vLLM cannot be installed here (it pins its own CUDA torch). The stand-in mirrors the names,
signatures and output fields of vLLM's v1 engine and logs every call, so these tests check what
the runtime calls with what, how outputs become v2/OpenAI answers (streaming included), how
errors map, and that requests reach the engine at once (continuous batching), not batch by batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.tasks import test_text_generation as spec
from tests.tasks.conftest import HERE, ROOT, text_generation_server

FAKE = HERE / "fake_vllm"


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory) -> Path:
    from modelbuild.tiny_models import build_causal_lm

    return build_causal_lm(tmp_path_factory.mktemp("vllm-model") / "llama", seed=0)


@pytest.fixture(scope="module")
def engine_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vllm-log") / "calls.jsonl"


@pytest.fixture(scope="module")
def vllm_server(hf_model, engine_log, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("vllm-server") / "server.log"
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join([str(FAKE), str(ROOT)]),
        "FAKE_VLLM_LOG": str(engine_log),
    }
    extra_args = ["--backend", "vllm", "--max_batch_size", "4", "--max_queue_size", "8"]
    with text_generation_server(hf_model, log_path, extra_args, env) as server:
        yield server


def _calls(engine_log: Path, event: str | None = None) -> list[dict]:
    lines = [json.loads(line) for line in engine_log.read_text().splitlines() if line.strip()]
    return [line for line in lines if event is None or line["event"] == event]


def _expected_greedy(hf_model: Path, prompt: str, max_tokens: int, templated: bool = False) -> tuple[list[int], str]:
    """What the stand-in engine writes greedily (its rule), decoded as our RowState decodes it."""
    sys.path.insert(0, str(FAKE))
    try:
        from vllm.v1.engine.async_llm import READABLE, next_token
    finally:
        sys.path.remove(str(FAKE))
        for name in [name for name in sys.modules if name == "vllm" or name.startswith("vllm.")]:
            del sys.modules[name]  # keep the stand-in out of this process's later imports
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_model)
    ids = tokenizer.encode(prompt, add_special_tokens=not templated)
    letters = tokenizer.convert_tokens_to_ids(READABLE)
    generated: list[int] = []
    for _ in range(max_tokens):
        generated.append(next_token(ids + generated, letters, None))
    return ids, tokenizer.decode(generated, skip_special_tokens=True)


def test_engine_built_from_engine_args(vllm_server, engine_log, hf_model):
    (built,) = _calls(engine_log, "from_engine_args")
    assert built["args"]["model"] == str(hf_model) and built["args"]["disable_log_stats"] is False
    assert "text-generation backend: vllm" in vllm_server.log_path.read_text(errors="replace")


def test_v2_request_becomes_one_engine_request_per_prompt(vllm_server, engine_log, hf_model):
    prompts = ["first prompt", "second"]
    texts, reasons = spec._texts(spec._v2(vllm_server, prompts, {"max_tokens": 7, "temperature": 0, "stop": "zzzz"}))
    calls = _calls(engine_log, "generate")[-2:]
    for prompt, text, call in zip(prompts, texts, calls, strict=True):
        ids, expected = _expected_greedy(hf_model, prompt, 7)
        assert call["prompt"] == {"prompt_token_ids": ids}
        params = call["params"]
        assert (params["n"], params["temperature"], params["max_tokens"]) == (1, 0.0, 7)
        assert params["stop"] == ["zzzz"] and params["output_kind"] == "DELTA" and params["seed"] is None
        assert text == expected
    assert reasons == ["length", "length"]


def test_sampling_parameters_and_seeds_reach_the_engine(vllm_server, engine_log):
    parameters = {"max_tokens": 5, "temperature": 0.7, "top_p": 0.9, "seed": 41}
    first = spec._texts(spec._v2(vllm_server, ["sample", "sample"], parameters))[0]
    calls = _calls(engine_log, "generate")[-2:]
    assert [(c["params"]["temperature"], c["params"]["top_p"], c["params"]["seed"]) for c in calls] == [
        (0.7, 0.9, 41),
        (0.7, 0.9, 42),  # prompt i samples with seed + i, as on the transformers path
    ]
    assert spec._texts(spec._v2(vllm_server, ["sample", "sample"], parameters))[0] == first


def test_stop_sequence_ends_the_row_and_aborts_the_engine_request(vllm_server, engine_log, hf_model):
    _, full = _expected_greedy(hf_model, "stop here", 20)
    stop = full[5:7]
    (text,), (reason,) = spec._texts(spec._v2(vllm_server, ["stop here"], {"max_tokens": 20, "stop": stop}))
    assert text == full[: full.find(stop)] and reason == "stop"
    request_id = _calls(engine_log, "generate")[-1]["request_id"]
    ended = [c for c in _calls(engine_log) if c.get("request_id") == request_id and c["event"] != "generate"]
    assert ended[0]["event"] == "aborted" and ended[0]["tokens"] < 20


def test_openai_chat_streams_the_engine_tokens(vllm_server, hf_model):
    from openai import OpenAI

    client = OpenAI(base_url=f"{vllm_server.url}/openai/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "stream it"}]
    chunks = list(client.chat.completions.create(model="llama", messages=messages, max_tokens=9, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    templated = "<s><|user|>\nstream it</s>\n<|assistant|>\n"
    assert streamed == _expected_greedy(hf_model, templated, 9, templated=True)[1]
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert chunks[-1].choices[0].finish_reason == "length"


def test_requests_join_the_running_engine_without_waiting_for_a_batch(vllm_server, engine_log):
    """A short request sent while a long one decodes is admitted beside it and finishes first."""
    long_done = threading.Event()
    long_result: dict = {}

    def long_request():
        long_result["response"] = spec._v2(vllm_server, ["a long one"], {"max_tokens": 200})
        long_done.set()

    before = len(_calls(engine_log, "generate"))
    thread = threading.Thread(target=long_request)
    thread.start()
    deadline = time.monotonic() + 30
    while len(_calls(engine_log, "generate")) == before and time.monotonic() < deadline:
        time.sleep(0.02)
    long_id = _calls(engine_log, "generate")[-1]["request_id"]
    short = spec._v2(vllm_server, ["short"], {"max_tokens": 3})
    thread.join(60)
    assert short.status_code == 200 and long_result["response"].status_code == 200
    short_call = _calls(engine_log, "generate")[-1]
    assert long_id in short_call["running"]  # admitted while the long request was running
    order = [c["request_id"] for c in _calls(engine_log, "finished")]
    assert order.index(short_call["request_id"]) < order.index(long_id)


def test_engine_errors_map_to_http_statuses(vllm_server):
    rejected = spec._v2(vllm_server, ["VLLM_REJECTS this"], {"max_tokens": 3})
    assert rejected.status_code == 400 and "vLLM rejected the request" in rejected.json()["error"]
    ours = spec._v2(vllm_server, ["x"], {"max_tokens": 1000})  # checked before the engine sees it
    assert ours.status_code == 400 and "context" in ours.json()["error"]


def test_dead_engine_makes_the_pod_unready_and_not_live(vllm_server):
    """vLLM cannot recover from EngineDeadError: like an unrecoverable device error, the pod must
    restart, so readiness and liveness fail and later requests get 503 instead of 500s forever."""
    dead = spec._v2(vllm_server, ["ENGINE_DEAD now"], {"max_tokens": 3})
    assert dead.status_code == 500
    assert requests.get(f"{vllm_server.url}/v2/models/llama/ready", timeout=10).status_code == 503
    assert requests.get(f"{vllm_server.url}/v2/health/live", timeout=10).status_code == 503
    after = spec._v2(vllm_server, ["fine"], {"max_tokens": 3})
    assert after.status_code == 503 and "dead" in after.text


def test_backend_vllm_without_vllm_exits_with_a_clear_message(hf_model):
    completed = subprocess.run(
        [sys.executable, "-m", "predictor", "--model_name", "m", "--model_dir", str(hf_model),
         "--device", "cpu", "--backend", "vllm"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert completed.returncode == 2
    assert "--backend vllm needs vLLM installed" in completed.stderr


def test_cpu_serving_never_imports_vllm():
    from predictor.backends import select_backend

    assert "vllm" not in sys.modules
    assert select_backend(str(ROOT), "cpu") == "transformers"
    assert "vllm" not in sys.modules
