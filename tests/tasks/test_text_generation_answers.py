"""Text generation answers that do not depend on the batch: per-row seeds, the context, decoding cost.

* A seeded request samples the same text alone and batched with any other rows.
* Seeds are exact integers in the range the CPU generator honours; anything else is a 400.
* A long prompt with few new tokens batched with a short prompt with many never runs past the
  context (a GPT-2 with learned position embeddings raises IndexError there).
* Tokenizing runs off the event loop, and streaming decodes each token once, not the whole row.
"""

from __future__ import annotations

import asyncio
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from predictor.tasks.generation import GenerateItem, RowState, SamplingParams, fitting_groups
from tests.predictor.harness import start_server, stop_server

SAMPLED = {"max_tokens": 12, "temperature": 1.0, "top_p": 0.95}


def _v2(server_url: str, name: str, prompts, parameters=None):
    body = {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [len(prompts)], "data": prompts}]}
    if parameters is not None:
        body["parameters"] = parameters
    return requests.post(f"{server_url}/v2/models/{name}/infer", json=body, timeout=120)


def _texts(response) -> list[str]:
    assert response.status_code == 200, response.text
    outputs = {output["name"]: output for output in response.json()["outputs"]}
    return outputs["text_output"]["data"]


# ----------------------------------------------------------------------------- seeds


def test_seeded_row_samples_the_same_text_alone_and_beside_other_rows(generator):
    (alone,) = _texts(_v2(generator.url, generator.name, ["sample"], {**SAMPLED, "seed": 7}))
    # Prompt i of a request samples with seed + i: "sample" runs with seed 7 beside another prompt.
    together = _texts(_v2(generator.url, generator.name, ["a longer neighbour prompt", "sample"], {**SAMPLED, "seed": 6}))
    assert together[1] == alone


def test_seeded_requests_keep_their_text_when_concurrent_with_other_seeds(generator):
    def run(seed: int) -> str:
        return _texts(_v2(generator.url, generator.name, ["sample"], {**SAMPLED, "seed": seed}))[0]

    alone = {seed: run(seed) for seed in (21, 22, 23)}
    with ThreadPoolExecutor(3) as pool:
        concurrent = dict(zip((21, 22, 23), pool.map(run, (21, 22, 23)), strict=True))
    assert concurrent == alone
    assert len(set(alone.values())) > 1  # the seeds do matter


@pytest.mark.parametrize(
    "seed, message",
    [
        (2**53 + 1, "seed must be between 0 and 4294967295"),  # would have become 2**53 through a float
        (2**32, "seed must be between 0 and 4294967295"),  # the CPU generator keeps only 32 bits
        (2**63 - 2, "seed must be between 0 and 4294967295"),
        (-1, "seed must be between 0 and 4294967295"),
        (1.5, "seed must be an integer"),
        (1e300, "seed must be an integer"),
        ("twelve", "seed must be an integer"),
        (True, "seed must be an integer"),
    ],
)
def test_seeds_outside_what_the_generator_honours_are_400(generator, seed, message):
    response = _v2(generator.url, generator.name, ["sample"], {**SAMPLED, "seed": seed})
    assert response.status_code == 400, response.text
    assert message in response.text


def test_largest_seed_and_a_decimal_string_seed_are_accepted(generator):
    assert _v2(generator.url, generator.name, ["sample"], {**SAMPLED, "seed": 2**32 - 1}).status_code == 200
    by_string = _texts(_v2(generator.url, generator.name, ["sample"], {**SAMPLED, "seed": "7"}))
    assert by_string == _texts(_v2(generator.url, generator.name, ["sample"], {**SAMPLED, "seed": 7}))


# ----------------------------------------------------------------------------- the context


@pytest.fixture(scope="module")
def gpt2_server(tmp_path_factory):
    """A GPT-2 with a 64-token context and learned position embeddings, batching for 300 ms."""
    from modelbuild.tiny_models import build_gpt2_lm

    model_dir = build_gpt2_lm(tmp_path_factory.mktemp("gpt2"), context=64)
    server = start_server(
        model_dir,
        tmp_path_factory.mktemp("gpt2-logs"),
        "--device", "cpu", "--max_batch_size", "4", "--batch_wait_ms", "300",
        name="gpt2",
    )  # fmt: skip
    yield server
    stop_server(server)


def test_long_prompt_batched_with_many_new_tokens_stays_inside_the_context(gpt2_server):
    long_prompt = "x" * 58  # 59 tokens with BOS: room for 5 new ones
    calls = [(long_prompt, 4), ("hi", 50)]  # together: padded to 59 + 50 new tokens > 64 positions

    def run(call):
        prompt, max_tokens = call
        return _v2(gpt2_server.http, "gpt2", [prompt], {"max_tokens": max_tokens})

    with ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(run, calls))
    assert [r.status_code for r in responses] == [200, 200], [r.text for r in responses]
    assert [len(_texts(r)[0]) for r in responses] == [4, 50]  # one letter or space per token
    # And the same answers alone (greedy: batching changes nothing).
    assert [_texts(run(call)) for call in calls] == [_texts(r) for r in responses]


def _item(prompt_tokens: int, max_tokens: int) -> GenerateItem:
    return GenerateItem(tuple(range(prompt_tokens)), max_tokens, (), SamplingParams(0.0, 1.0))


def test_fitting_groups_keep_every_call_inside_the_context():
    rng = random.Random(3)
    context = 64
    for _ in range(200):
        items = []
        for _ in range(rng.randint(1, 8)):
            prompt = rng.randint(1, context - 1)
            items.append(_item(prompt, rng.randint(1, context - prompt)))
        groups = fitting_groups(items, context)
        assert sorted(index for group in groups for index in group) == list(range(len(items)))
        for group in groups:
            longest = max(len(items[index].input_ids) for index in group)
            assert longest + max(items[index].max_tokens for index in group) <= context


def test_items_that_fit_together_share_one_call():
    assert fitting_groups([_item(10, 20), _item(30, 5), _item(5, 30)], 64) == [[0, 1, 2]]


# ----------------------------------------------------------------------------- tokenizing, decoding


@pytest.fixture(scope="module")
def tiny_llm_task(tiny_models):
    from predictor.backends import task_factory
    from predictor.device import DeviceInfo
    from predictor.tasks.base import ServingLimits

    task = task_factory("text-generation")(str(tiny_models["text-generation"]), DeviceInfo("cpu", 1), ServingLimits(), {})
    task.load()
    return task


def test_tokenizing_and_chat_templating_run_off_the_event_loop(tiny_llm_task):
    from kserve.protocol.infer_type import InferInput, InferRequest

    from predictor.device import DeviceInfo
    from predictor.openai_model import OpenAITextGenerationModel

    tokenizer = tiny_llm_task.backend.tokenizer
    threads: list[str] = []

    class RecordingTokenizer:
        def __getattr__(self, name):
            attribute = getattr(tokenizer, name)
            if name in ("encode", "apply_chat_template"):
                threads.append(threading.current_thread().name)
            return attribute

    tiny_llm_task.backend.tokenizer = RecordingTokenizer()
    model = OpenAITextGenerationModel("llama", tiny_llm_task, DeviceInfo("cpu", 1), warmup=False)
    model.ready = True
    model.lifecycle.mark_loaded()

    async def calls():
        loop_thread = threading.current_thread().name
        request = InferRequest("llama", [InferInput("text_input", [1], "BYTES", ["hello"])], parameters={"max_tokens": 2})
        await model.predict(request)
        await model.predict({"instances": ["hello"], "parameters": {"max_tokens": 2}})
        await model.create_chat_completion(
            {"model": "llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        )
        return loop_thread

    try:
        loop_thread = asyncio.run(calls())
    finally:
        tiny_llm_task.backend.tokenizer = tokenizer
        model.stop()
    assert len(threads) >= 4 and loop_thread not in threads, threads


class CountingDecoder:
    def __init__(self, decoder):
        self.decoder, self.tokens_decoded = decoder, 0

    def decode(self, tokens, **kwargs):
        self.tokens_decoded += len(tokens)
        return self.decoder.decode(tokens, **kwargs)


def test_streaming_decodes_each_token_a_bounded_number_of_times(tiny_llm_task):
    decoder = CountingDecoder(tiny_llm_task.backend.decoder)
    count = 3000
    rng = random.Random(5)
    tokens = [rng.choice(range(len(tiny_llm_task.backend.tokenizer) - 4)) for _ in range(count)]
    pieces: list[str] = []
    item = GenerateItem((1,), count, (), SamplingParams(0.0, 1.0), pieces.append)
    row = RowState(item, decoder, frozenset())
    for token in tokens:
        row.add(token)
    row.close()
    assert decoder.tokens_decoded < 10 * count  # a whole-row decode per token would be ~count**2 / 2


def test_incremental_text_equals_decoding_the_whole_row_including_split_characters(tiny_llm_task):
    decoder = tiny_llm_task.backend.decoder
    rng = random.Random(11)
    texts = ["héllo wörld ✓ 日本語 🙂 end", "plain ascii", "🙂🙂🙂", "a\u00e9\u4e2d\U0001f600"]
    for text in texts:
        tokens = decoder.encode(text, add_special_tokens=False)
        tokens += [rng.randrange(0, 256) for _ in range(20)]  # stray bytes: invalid UTF-8 pieces
        pieces: list[str] = []
        item = GenerateItem((1,), len(tokens), (), SamplingParams(0.0, 1.0), pieces.append)
        row = RowState(item, decoder, frozenset())
        for token in tokens:
            row.add(token)
        row.close()
        whole = decoder.decode(tokens, skip_special_tokens=True)
        assert row.text == whole and "".join(pieces) == whole
