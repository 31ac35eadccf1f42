"""Per-row generation tracking (stop sequences, streaming hold-back, EOS, limits) and parameter checks."""

from __future__ import annotations

import pytest
from kserve.errors import InvalidInput

from predictor.backends.causal_lm import catch_up
from predictor.tasks.generation import GenerateItem, RowState, SamplingParams
from predictor.tasks.text_generation import GenerationParameters, v2_stop

EOS = 0
GREEDY = SamplingParams(0.0, 1.0)


class CharDecoder:
    """Token i decodes to chr(i); 1 is half of a multi-byte character until 2 completes it."""

    def decode(self, tokens, skip_special_tokens=True):
        text = ""
        for index, token in enumerate(tokens):
            if token == 1:
                text += "é" if index + 1 < len(tokens) and tokens[index + 1] == 2 else "\ufffd"
            elif token == 2:
                continue
            else:
                text += chr(token)
        return text


def _row(max_tokens=50, stop=(), sink=None):
    item = GenerateItem((5, 6), max_tokens, tuple(stop), GREEDY, sink)
    return RowState(item, CharDecoder(), frozenset({EOS}))


def _feed(row, text):
    for char in text:
        row.add(ord(char))


def test_stop_sequence_cuts_and_is_never_streamed():
    pieces = []
    row = _row(stop=["END"], sink=pieces.append)
    _feed(row, "abcEN")
    assert "".join(pieces) == "abc"  # "EN" may start the stop sequence: held back
    _feed(row, "D and more")
    assert row.done and row.finish_reason == "stop"
    assert row.result().text == "abc" and "".join(pieces) == "abc"


def test_held_back_text_is_released_when_it_is_not_a_stop():
    pieces = []
    row = _row(stop=["END"], sink=pieces.append)
    _feed(row, "abcENx")
    assert "".join(pieces) == "abcENx"


def test_earliest_of_several_stops_wins():
    row = _row(stop=["zz", "b"])
    _feed(row, "abczz")
    assert row.result().text == "a"


def test_eos_finishes_with_stop_and_tokens_after_are_ignored():
    pieces = []
    row = _row(sink=pieces.append)
    _feed(row, "hi")
    row.add(EOS)
    row.add(ord("x"))
    result = row.result()
    assert (result.text, result.finish_reason, result.completion_tokens) == ("hi", "stop", 2)
    assert "".join(pieces) == "hi"


def test_max_tokens_finishes_with_length():
    row = _row(max_tokens=3)
    _feed(row, "abcdef")
    result = row.result()
    assert (result.text, result.finish_reason, result.completion_tokens, result.prompt_tokens) == (
        "abc",
        "length",
        3,
        2,
    )


def test_partial_characters_are_held_back():
    pieces = []
    row = _row(sink=pieces.append)
    _feed(row, "a")
    row.add(1)
    assert "".join(pieces) == "a"
    row.add(2)
    _feed(row, "b")
    assert "".join(pieces) == "aéb"


def test_close_flushes_and_marks_length():
    pieces = []
    row = _row(stop=["xyz"], sink=pieces.append)
    _feed(row, "abx")
    row.close()
    assert row.finish_reason == "length" and "".join(pieces) == "abx"


def test_cancelled_row_stops():
    row = _row()
    _feed(row, "ab")
    row.item.cancelled = True
    row.add(ord("c"))
    assert row.done and row.result().text == "ab"


def test_catch_up_feeds_tokens_a_backend_did_not_report():
    import torch

    rows = [_row(max_tokens=4), None]
    sequences = torch.tensor([[9, 9, ord("a"), ord("b"), EOS, 0], [9, 9, 1, 1, 1, 1]])
    catch_up(rows, sequences, prompt_width=2)
    assert rows[0].result().text == "ab" and rows[0].finish_reason == "stop"


def test_row_criteria_reports_done_rows_and_padding():
    import torch

    from predictor.backends.causal_lm import row_criteria

    rows = [_row(max_tokens=1), _row(max_tokens=5)]
    criteria = row_criteria([rows[0], rows[1], None])
    done = criteria(torch.tensor([[1, ord("a")], [1, ord("b")], [1, ord("c")]]), None)
    assert done.tolist() == [True, False, True]
    assert rows[0].result().text == "a" and rows[1].text == "b"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, ()), ("x", ("x",)), (["a", "b"], ("a", "b")), ((), ()), (b"s", ("s",))],
)
def test_stop_sequences(value, expected):
    assert GenerationParameters.parse({"stop": value}).stop == expected


@pytest.mark.parametrize("value", [["a"] * 5, [""], [3], {"a": 1}, ["x" * 300]])
def test_bad_stop_sequences(value):
    with pytest.raises(InvalidInput):
        GenerationParameters.parse({"stop": value})


def test_v2_stop_json_array_in_a_string():
    assert v2_stop('["a", "b"]') == ["a", "b"]
    assert v2_stop("[not json") == "[not json"
    assert v2_stop("plain") == "plain"


def test_chat_needs_a_template():
    from types import SimpleNamespace

    from predictor.device import DeviceInfo
    from predictor.tasks.base import ServingLimits
    from predictor.tasks.text_generation import TextGenerationTask

    backend = SimpleNamespace(tokenizer=SimpleNamespace(chat_template=None))
    task = TextGenerationTask("/nowhere", DeviceInfo("cpu", 1), ServingLimits(), {}, backend=backend)
    with pytest.raises(InvalidInput, match="no chat template"):
        task.chat_prompt([{"role": "user", "content": "hi"}])


def test_openai_default_values():
    from predictor.openai_model import _is_default

    assert _is_default(0.0, (0,)) and _is_default(False, (False, 0)) and _is_default(0, (False, 0))
    assert not _is_default(True, (1,)) and not _is_default(2, (1,)) and not _is_default(True, (False, 0))
