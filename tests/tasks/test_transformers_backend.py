"""The transformers classifiers answer what transformers' own pipelines answer, one forward per batch.

The backend loads a pipeline but calls the processor and the model directly (the pipeline's
``__call__`` costs a DataLoader and per-item steps); these tests hold it to the pipelines' answers
on the tiny random models, alone and in batches of different lengths and sizes.
"""

from __future__ import annotations

import io
import types

import pytest

from predictor.backends.transformers import TransformersBackend, scoring
from tests.tasks.helpers import png

TEXTS = ["good", "a much longer text that pads the others in its batch", "bad", "so-so, really"]


def _by_label(scores: list[dict]) -> dict[str, float]:
    return {entry["label"]: entry["score"] for entry in scores}


def _assert_same(answers: list[list[dict]], expected: list[list[dict]]) -> None:
    assert len(answers) == len(expected)
    for got, want in zip(answers, expected, strict=True):
        assert _by_label(got) == pytest.approx(_by_label(want), abs=1e-5)


@pytest.fixture(scope="module")
def text_backend(tiny_models):
    return TransformersBackend("text-classification", str(tiny_models["text-classification"]), "cpu")


@pytest.fixture(scope="module")
def image_backend(tiny_models):
    return TransformersBackend("image-classification", str(tiny_models["image-classification"]), "cpu")


def test_texts_score_as_the_text_classification_pipeline_scores_them(text_backend):
    expected = [text_backend.pipeline(text, top_k=None, truncation=True) for text in TEXTS]
    _assert_same(text_backend(TEXTS), expected)  # one padded batch
    _assert_same([text_backend([text])[0] for text in TEXTS], expected)  # one at a time


def test_every_label_is_scored_in_label_order(text_backend):
    (scores,) = text_backend(["fine"])
    assert [entry["label"] for entry in scores] == text_backend.labels
    assert sum(entry["score"] for entry in scores) == pytest.approx(1.0, abs=1e-5)  # softmax over 2 labels


def test_a_tokenizer_without_a_pad_token_scores_a_batch_one_text_at_a_time(text_backend):
    expected = text_backend(TEXTS)
    tokenizer = text_backend.pipeline.tokenizer
    pad_token, tokenizer.pad_token = tokenizer.pad_token, None  # as GPT-2-style tokenizers come
    try:
        with pytest.raises(ValueError, match="padding"):
            tokenizer(TEXTS, padding=True)
        _assert_same(text_backend(TEXTS), expected)
    finally:
        tokenizer.pad_token = pad_token


def test_images_score_as_the_image_classification_pipeline_scores_them(image_backend):
    from PIL import Image

    images = [Image.open(io.BytesIO(png(width, height, seed))).convert("RGB") for seed, (width, height) in
              enumerate([(32, 32), (64, 48), (20, 40)])]  # fmt: skip
    expected = [image_backend.pipeline(image, top_k=len(image_backend.labels)) for image in images]
    _assert_same(image_backend(images), expected)


@pytest.mark.parametrize(
    ("problem_type", "num_labels", "rule"),
    [
        (None, 2, "softmax"),
        ("single_label_classification", 3, "softmax"),
        ("multi_label_classification", 3, "sigmoid"),
        (None, 1, "sigmoid"),
        ("regression", 1, "none"),
    ],
)
def test_scores_follow_the_pipelines_rule(problem_type, num_labels, rule):
    assert scoring(types.SimpleNamespace(problem_type=problem_type, num_labels=num_labels)) == rule
