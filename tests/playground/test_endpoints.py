"""How ``--endpoint NAME=URL`` is read and what the playground sends and reads back (no I/O)."""

from __future__ import annotations

import pytest

from playground.__main__ import main
from playground.endpoints import (
    V1,
    V2,
    AnswerError,
    EndpointSpecError,
    Generation,
    parse_endpoint,
    parse_endpoints,
    read_answer,
    request_body,
)

GENERATION = Generation("a fox", None, steps=2, width=64, height=32, guidance=7.5, seed=3)


@pytest.mark.parametrize(
    ("url", "protocol", "infer_url"),
    [
        ("http://h:8080/v2/models/sd", V2, "http://h:8080/v2/models/sd/infer"),
        ("http://h:8080/v2/models/sd/infer", V2, "http://h:8080/v2/models/sd/infer"),
        ("https://h/prefix/v2/models/sd21-inf2/", V2, "https://h/prefix/v2/models/sd21-inf2/infer"),
        ("http://h:8080/v1/models/sd", V1, "http://h:8080/v1/models/sd:predict"),
        ("http://h:8080/v1/models/sd:predict", V1, "http://h:8080/v1/models/sd:predict"),
        # An InferenceGraph router: the body goes to its URL as is, in v1 (what it forwards to units).
        ("http://sd21-router.sd21.svc.cluster.local", V1, "http://sd21-router.sd21.svc.cluster.local/"),
    ],
)
def test_the_url_path_decides_protocol_and_infer_url(url, protocol, infer_url):
    endpoint = parse_endpoint(f"x={url}")
    assert (endpoint.name, endpoint.protocol, endpoint.infer_url) == ("x", protocol, infer_url)


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("http://h:8080/v2/models/sd", "expected NAME=URL"),
        ("a=", "expected NAME=URL"),
        ("a b=http://h", "the name may hold"),
        ("a=ftp://h/v2/models/sd", "must start with http"),
        ("a=http:///v2/models/sd", "must start with http"),
        ("a=http://h/v2/models/sd?x=1", "query"),
    ],
)
def test_a_bad_endpoint_spec_is_refused_with_the_reason(spec, complaint):
    with pytest.raises(EndpointSpecError, match=complaint):
        parse_endpoint(spec)


def test_endpoint_names_must_be_unique():
    with pytest.raises(EndpointSpecError, match="a given more than once"):
        parse_endpoints(["a=http://h/v2/models/x", "a=http://g/v2/models/y"])


def test_the_command_line_refuses_no_endpoint_and_bad_ones(capsys, monkeypatch):
    monkeypatch.delenv("PLAYGROUND_ENDPOINTS", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2 and "at least one --endpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--endpoint", "nourl"])
    assert "expected NAME=URL" in capsys.readouterr().err


def test_v2_and_v1_bodies_follow_the_predictor_protocol():
    v2 = request_body(parse_endpoint("a=http://h/v2/models/sd"), GENERATION)
    assert v2["inputs"] == [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["a fox"]}]
    assert v2["parameters"] == {"num_inference_steps": 2, "guidance_scale": 7.5, "height": 32, "width": 64, "seed": 3}
    negative = Generation("a fox", "blurry", 2, 64, 32, 7.5, 3)
    assert request_body(parse_endpoint("a=http://h/v2/models/sd"), negative)["inputs"][1]["data"] == ["blurry"]
    v1 = request_body(parse_endpoint("a=http://h"), negative)
    assert v1 == {"instances": [{"prompt": "a fox", "negative_prompt": "blurry", "num_inference_steps": 2,
                                 "guidance_scale": 7.5, "height": 32, "width": 64, "seed": 3}]}


def test_the_unit_comes_from_the_parameters_else_the_v2_model_name():
    v2 = parse_endpoint("a=http://h/v2/models/sd")
    outputs = [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["iVBOR"]}]
    served = read_answer(v2, {"model_name": "sd", "outputs": outputs, "parameters": {"unit": "u", "device": "cuda"}})
    assert (served.image_b64, served.unit, served.device) == ("iVBOR", "u", "cuda")
    plain = read_answer(v2, {"model_name": "sd21-g5-cuda", "outputs": outputs})  # a predictor without parameters
    assert (plain.unit, plain.device) == ("sd21-g5-cuda", None)


def test_an_answer_without_an_image_says_what_it_holds():
    with pytest.raises(AnswerError, match=r"no output named \"image\" \(outputs: label\)"):
        read_answer(parse_endpoint("a=http://h/v2/models/m"), {"outputs": [{"name": "label", "data": [1]}]})
    with pytest.raises(AnswerError, match="predictions"):
        read_answer(parse_endpoint("a=http://h"), {"predictions": [{"label": "cat"}]})
