"""Text generation served for real: v2 infer (HTTP, gRPC), v1, OpenAI completions and chat (+ streaming)."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests


def _v2(server, prompts, parameters=None):
    body = {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [len(prompts)], "data": prompts}]}
    if parameters is not None:
        body["parameters"] = parameters
    return requests.post(f"{server.url}/v2/models/{server.name}/infer", json=body, timeout=60)


def _texts(response) -> tuple[list[str], list[str]]:
    assert response.status_code == 200, response.text
    outputs = {output["name"]: output for output in response.json()["outputs"]}
    return outputs["text_output"]["data"], outputs["finish_reason"]["data"]


def _openai(server, path, body, stream=False):
    return requests.post(f"{server.url}/openai/v1/{path}", json=body, timeout=60, stream=stream)


def _events(response) -> list:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = []
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


# ----------------------------------------------------------------------------- v2 / v1


def test_metadata(generator):
    metadata = requests.get(f"{generator.url}/v2/models/{generator.name}", timeout=10).json()
    assert metadata["inputs"] == [{"name": "text_input", "datatype": "BYTES", "shape": [-1]}]
    assert [output["name"] for output in metadata["outputs"]] == ["text_output", "finish_reason"]


def test_v2_greedy_is_deterministic_and_batch_invariant(generator):
    prompts = ["hello there", "a much longer prompt than the first one"]
    texts, reasons = _texts(_v2(generator, prompts, {"max_tokens": 12}))
    assert reasons == ["length", "length"]
    assert all(len(text) == 12 for text in texts)  # the tiny model writes one letter or space per token
    for prompt, batched in zip(prompts, texts, strict=True):
        alone, _ = _texts(_v2(generator, [prompt], {"max_tokens": 12, "temperature": 0}))
        assert alone == [batched]  # left padding and attention masks leave each row's result unchanged


def test_v2_stop_sequence(generator):
    (text,), _ = _texts(_v2(generator, ["stop me"], {"max_tokens": 16}))
    stop = text[6:8]
    (stopped,), (reason,) = _texts(
        _v2(generator, ["stop me"], {"max_tokens": 16, "stop": json.dumps([stop, "zzzzzz"])})
    )
    assert stopped == text[: text.find(stop)] and reason == "stop"
    (single,), _ = _texts(_v2(generator, ["stop me"], {"max_tokens": 16, "stop": stop}))
    assert single == stopped


def test_v2_sampling_with_seed_is_reproducible(generator):
    parameters = {"max_tokens": 10, "temperature": 1.0, "top_p": 0.9, "seed": 7}
    first, _ = _texts(_v2(generator, ["sample"], parameters))
    second, _ = _texts(_v2(generator, ["sample"], parameters))
    assert first == second


def test_concurrent_requests_share_batches(generator):
    """Requests that queue while the device is busy go into one call together. A lone request never
    waits for company, so the requests here arrive while a long one holds the device: twelve at
    once, each far quicker to send than the long one is to generate (a short one alone would not
    show sharing reliably: the tiny model answers 24 tokens in a few milliseconds)."""

    def metric_totals():
        text = requests.get(f"{generator.url}/metrics", timeout=10).text
        name = re.escape(generator.name)
        pattern = r"predictor_batch_size_(sum|count)\{[^}]*model_name=\"" + name + r"\"[^}]*\} ([0-9.e+]+)"
        values = dict(re.findall(pattern, text))
        return float(values.get("sum", 0)), float(values.get("count", 0))

    before = metric_totals()
    with ThreadPoolExecutor(13) as pool:
        long = pool.submit(_v2, generator, ["keep the device busy"], {"max_tokens": 200})
        results = list(pool.map(lambda i: _v2(generator, [f"request {i}"], {"max_tokens": 24}), range(12)))
        results.append(long.result())
    assert all(response.status_code == 200 for response in results)
    after = metric_totals()
    items, calls = after[0] - before[0], after[1] - before[1]
    assert items == 13 and calls < 13, (items, calls)


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({"max_tokens": 0}, "max_tokens must be between 1"),
        ({"max_tokens": 251}, "exceed the model's context of 256 tokens"),
        ({"max_tokens": "many"}, "max_tokens must be an integer"),
        ({"temperature": 3}, "temperature must be between 0 and 2"),
        ({"top_p": 0}, "top_p must be greater than 0"),
        ({"stop": '["a", "b", "c", "d", "e"]'}, "at most 4"),
        ({"stop": ""}, "stop[0] is empty"),
        ({"stop": "[1]"}, "stop[0] must be a string"),
        ({"stop": 5}, "stop must be a string or a list"),
        ({"seed": -1}, "seed must be between"),
        ({"beam_width": 2}, "unknown parameter"),
    ],
)
def test_v2_bad_parameters_are_400(generator, parameters, expected):
    response = _v2(generator, ["hello"], parameters)
    assert response.status_code == 400, response.text
    assert expected in response.json()["error"]


def test_v2_bad_inputs_are_400(generator):
    too_long = "x" * 300  # the tiny model's context is 256 tokens, one per byte
    for prompts, expected in (([""], "is empty"), ([too_long], "context is 256 tokens"), (["a"] * 5, "batch limit")):
        response = _v2(generator, prompts)
        assert response.status_code == 400 and expected in response.json()["error"], response.text
    body = {"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]}
    response = requests.post(f"{generator.url}/v2/models/{generator.name}/infer", json=body, timeout=10)
    assert response.status_code == 400 and "unknown input" in response.json()["error"]


def test_v1(generator):
    response = requests.post(
        f"{generator.url}/v1/models/{generator.name}:predict",
        json={"instances": ["hello there", {"prompt": "again"}], "parameters": {"max_tokens": 5}},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [len(p["text"]) for p in predictions] == [5, 5]
    assert {p["finish_reason"] for p in predictions} == {"length"}
    response = requests.post(
        f"{generator.url}/v1/models/{generator.name}:predict", json={"instances": [{"text": "x"}]}, timeout=10
    )
    assert response.status_code == 400


def test_grpc(generator):
    (expected,), _ = _texts(_v2(generator, ["over grpc"], {"max_tokens": 6}))
    calls = [
        {"op": "infer", "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["over grpc"]}],
         "parameters": {"max_tokens": 6, "temperature": 0.0, "stop": "zzzz"}},
        {"op": "infer", "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["over grpc"]}],
         "parameters": {"max_tokens": 100000}},
    ]  # fmt: skip
    ok, bad = generator.grpc(calls)
    assert ok["outputs"]["text_output"]["data"] == [expected]
    assert ok["outputs"]["finish_reason"]["data"] == ["length"]
    assert bad["error"]["code"] == "StatusCode.INVALID_ARGUMENT" and "max_tokens" in bad["error"]["message"]


# ----------------------------------------------------------------------------- OpenAI


def test_openai_models(generator):
    listing = requests.get(f"{generator.url}/openai/v1/models", timeout=10).json()
    assert [model["id"] for model in listing["data"]] == [generator.name]


def test_completion_matches_v2(generator):
    (expected,), _ = _texts(_v2(generator, ["openai prompt"], {"max_tokens": 9}))
    response = _openai(generator, "completions", {"model": generator.name, "prompt": "openai prompt", "max_tokens": 9})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "text_completion" and body["model"] == generator.name
    assert body["choices"][0]["text"] == expected and body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 9
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 9


def test_completion_list_of_prompts(generator):
    body = {"model": generator.name, "prompt": ["one", "two"], "max_tokens": 4, "temperature": 0}
    choices = _openai(generator, "completions", body).json()["choices"]
    assert [choice["index"] for choice in choices] == [0, 1]


def test_completion_stream_equals_non_stream(generator):
    body = {"model": generator.name, "prompt": "stream this", "max_tokens": 14}
    expected = _openai(generator, "completions", body).json()["choices"][0]["text"]
    stop = expected[8:10]
    events = _events(
        _openai(generator, "completions", {**body, "stream": True, "stream_options": {"include_usage": True}}, True)
    )
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == expected
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 14
    assert len([c for c in chunks if c["choices"] and c["choices"][0]["text"]]) > 1  # streamed in pieces
    # A stop sequence is never streamed, not even its first character.
    events = _events(_openai(generator, "completions", {**body, "stream": True, "stop": stop}, True))
    streamed = "".join(e["choices"][0]["text"] for e in events[:-1] if e["choices"])
    assert streamed == expected[: expected.find(stop)]
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


def test_chat_completion_and_stream(generator):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    body = {"model": generator.name, "messages": messages, "max_tokens": 10}
    response = _openai(generator, "chat/completions", body)
    assert response.status_code == 200, response.text
    completion = response.json()
    assert completion["object"] == "chat.completion"
    message = completion["choices"][0]["message"]
    assert message["role"] == "assistant" and len(message["content"]) == 10
    events = _events(_openai(generator, "chat/completions", {**body, "stream": True}, True))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == message["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    # max_completion_tokens is the newer name of max_tokens
    body = {"model": generator.name, "messages": messages, "max_completion_tokens": 3}
    assert len(_openai(generator, "chat/completions", body).json()["choices"][0]["message"]["content"]) == 3


def test_chat_template_applied(generator):
    """The chat prompt is the tokenizer's template: the same text through v2 gives the same answer."""
    messages = [{"role": "user", "content": "same"}]
    chat = _openai(generator, "chat/completions", {"model": generator.name, "messages": messages, "max_tokens": 8})
    templated = "<|user|>\nsame</s>\n<|assistant|>\n"  # the tiny template; v2 adds <s> as the tokenizer does
    (text,), _ = _texts(_v2(generator, [templated], {"max_tokens": 8}))
    assert chat.json()["choices"][0]["message"]["content"] == text


@pytest.mark.parametrize(
    ("path", "body", "status", "expected"),
    [
        ("completions", {"model": "other", "prompt": "x"}, 404, "not found"),
        ("completions", {"model": "llama", "prompt": ""}, 400, "prompt"),
        ("completions", {"model": "llama", "prompt": [1, 2]}, 400, "prompt"),
        ("completions", {"model": "llama", "prompt": "x", "max_tokens": 1000}, 400, "context"),
        ("completions", {"model": "llama", "prompt": "x", "temperature": -1}, 400, "temperature"),
        ("completions", {"model": "llama", "prompt": "x", "n": 2}, 400, "n=2"),
        ("completions", {"model": "llama", "prompt": "x", "logprobs": 2}, 400, "logprobs=2"),
        ("chat/completions", {"model": "llama", "messages": [{"role": "user", "content": "x"}],
                              "logprobs": True}, 400, "logprobs=True"),
        ("completions", {"model": "llama", "prompt": "x", "presence_penalty": 0.5}, 400, "presence_penalty"),
        ("completions", {"model": "llama", "prompt": "x", "stop": ["a"] * 5, "stream": True}, 400, "at most 4"),
        ("chat/completions", {"model": "llama", "messages": []}, 400, "messages"),
        ("chat/completions", {"model": "llama", "messages": [{"role": "tool", "content": "x"}]}, 400, "role"),
        ("chat/completions", {"model": "llama", "messages": [{"role": "user", "content": 3}]}, 400, "content"),
        ("chat/completions", {"model": "llama", "messages": [{"role": "user", "content": "x"}],
                              "tools": [{"type": "function"}]}, 400, "tools"),
        ("completions", {"model": "llama", "prompt": "x", "stream": "yes"}, 400, "stream must be a boolean"),
        ("chat/completions", {"model": "llama", "messages": [{"role": "user", "content": "x"}],
                              "response_format": {"type": "json_object"}}, 400, "response_format"),
    ],
)  # fmt: skip
def test_openai_errors(generator, path, body, status, expected):
    response = _openai(generator, path, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert expected in error["message"] and error["code"] == str(status)


def test_openai_defaults_of_unsupported_fields_are_accepted(generator):
    body = {
        "model": generator.name,
        "messages": [{"role": "developer", "content": "brief"}, {"role": "user", "content": [{"type": "text", "text": "x"}]}],
        "max_tokens": 2, "n": 1, "logprobs": False, "frequency_penalty": 0.0, "presence_penalty": 0,
        "logit_bias": {}, "tools": [], "response_format": {"type": "text"}, "user": "someone",
    }  # fmt: skip
    response = _openai(generator, "chat/completions", body)
    assert response.status_code == 200, response.text
    body = {"model": generator.name, "prompt": "x", "max_tokens": 2, "logprobs": None, "echo": False, "best_of": 1}
    assert _openai(generator, "completions", body).status_code == 200


def test_openai_body_not_json(generator):
    response = requests.post(
        f"{generator.url}/openai/v1/completions", data=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
