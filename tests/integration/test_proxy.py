"""Proxy mode: the emulator in front of a fake TGI or OpenAI-compatible server (real HTTP on 127.0.0.1), seen
through a real `sagemaker-runtime` client, then the whole pipeline (`run_file`, `sagebatch run`) against it."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from sagebatch.tooling.cli import main as sagebatch_main
from sagebatch.tooling.emulator.proxy import ProxyConfig
from sagebatch.tooling.emulator.server import Emulator, EmulatorConfig
from sagebatch.tooling.local.session import run_file
from tests.conftest import jsonl, serving

ENDPOINT = "mistral-7b-instruct"
TGI_ANSWER = {
    "generated_text": "Paris is the capital of France.",
    "details": {"finish_reason": "eos_token", "generated_tokens": 9, "seed": None, "prefill": [], "tokens": []},
}
OPENAI_TEXT = " The capital of France is Paris."
OPENAI_ANSWER = {
    "id": "cmpl-1",
    "object": "text_completion",
    "model": "fake-model",
    "choices": [{"index": 0, "text": OPENAI_TEXT, "finish_reason": "length", "logprobs": None}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
}
MODELS = {"object": "list", "data": [{"id": "fake-model", "object": "model"}, {"id": "other-model", "object": "model"}]}


class FakeUpstream:
    """A model server on loopback: fixed answers per (method, path), every request recorded."""

    def __init__(self, routes: dict[tuple[str, str], tuple[int, Any]], delay_s: float = 0.0):
        self.routes = routes  # (method, path) -> (status, JSON-able body or raw str)
        self.delay_s = delay_s
        self.requests: list[tuple[str, str, Any]] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                upstream.requests.append((self.command, self.path, json.loads(raw) if raw else None))
                time.sleep(upstream.delay_s)
                status, body = upstream.routes.get((self.command, self.path), (404, {"error": "not found"}))
                data = (body if isinstance(body, str) else json.dumps(body)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def bodies(self, path: str) -> list[Any]:
        return [body for _, p, body in self.requests if p == path]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def fake_tgi() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream({("POST", "/generate"): (200, TGI_ANSWER), ("GET", "/health"): (200, "")})
    yield upstream
    upstream.close()


@pytest.fixture
def fake_openai() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream({("POST", "/v1/completions"): (200, OPENAI_ANSWER), ("GET", "/v1/models"): (200, MODELS)})
    yield upstream
    upstream.close()


def proxying(config: ProxyConfig):
    """The emulator in proxy mode on loopback; yields a sagemaker-runtime client pointed at it."""
    return serving(Emulator(endpoint_name=ENDPOINT, proxy=config))


def invoke(client: Any, body: dict[str, Any]) -> Any:
    response = client.invoke_endpoint(EndpointName=ENDPOINT, ContentType="application/json", Body=json.dumps(body))
    return json.loads(response["Body"].read())


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more


GREEDY = {
    "inputs": "What is the capital of France?",
    "parameters": {"max_new_tokens": 16, "return_full_text": False, "details": True},
}


# -- tgi upstream ---------------------------------------------------------------------------------------------


def test_tgi_proxy_returns_the_upstream_answer_as_a_one_element_list(fake_tgi):
    # Given the emulator proxying to a TGI server
    with proxying(ProxyConfig(fake_tgi.url, "tgi")) as client:
        # When a request goes through SageMaker's API
        answer = invoke(client, GREEDY)

    # Then the answer is TGI's object wrapped as /invocations does, and TGI got the body unchanged
    assert answer == [TGI_ANSWER]
    assert fake_tgi.bodies("/generate") == [GREEDY]


@pytest.mark.parametrize(
    "kind, route, status",
    [("tgi", ("POST", "/generate"), 422), ("openai", ("POST", "/v1/completions"), 400)],
)
def test_an_upstream_error_arrives_as_a_model_error_with_its_status_and_body(fake_tgi, fake_openai, kind, route, status):
    # Given an upstream that rejects the request
    upstream = fake_tgi if kind == "tgi" else fake_openai
    error_body = (
        '{"error":"Input validation error: `inputs` must have less than 4096 tokens. Given: 5000","error_type":"validation"}'
    )
    upstream.routes[route] = (status, error_body)

    # When a request goes through the proxy
    with proxying(ProxyConfig(upstream.url, kind)) as client:
        with pytest.raises(client.exceptions.ModelError) as caught:
            invoke(client, GREEDY)

    # Then SageMaker's wrapper carries the upstream's status and its body verbatim
    response = caught.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert response["OriginalStatusCode"] == status
    assert response["OriginalMessage"] == error_body
    assert response["Error"]["Message"].startswith(f'Received client error ({status}) from primary with message "{error_body}"')


def test_an_unreachable_upstream_is_a_retryable_502_model_error():
    # Given the emulator proxying to a port nobody listens on
    with proxying(ProxyConfig(closed_port_url(), "tgi")) as client:
        # When a request goes through
        with pytest.raises(client.exceptions.ModelError) as caught:
            invoke(client, GREEDY)

    # Then it is a server-side container error that names the problem
    response = caught.value.response
    assert response["OriginalStatusCode"] == 502
    assert "cannot reach" in json.loads(response["OriginalMessage"])["error"]


def test_an_upstream_slower_than_the_proxy_timeout_is_a_sagemaker_timeout(fake_tgi):
    # Given an upstream that answers after 1 s and a proxy that waits 0.2 s
    fake_tgi.delay_s = 1.0
    with proxying(ProxyConfig(fake_tgi.url, "tgi", timeout_s=0.2)) as client:
        # When a request goes through
        with pytest.raises(client.exceptions.ModelError) as caught:
            invoke(client, GREEDY)

    # Then it is SageMaker's invocation timeout: OriginalStatusCode 0
    response = caught.value.response
    assert response["OriginalStatusCode"] == 0
    assert "timed out" in response["Error"]["Message"]


# -- openai upstream ------------------------------------------------------------------------------------------


def test_openai_proxy_translates_the_request_and_the_answer(fake_openai):
    # Given the emulator proxying to an OpenAI-compatible server, no model name configured
    with proxying(ProxyConfig(fake_openai.url, "openai")) as client:
        # When a greedy TGI request goes through
        answer = invoke(client, GREEDY)

    # Then the server got a completions request for its first listed model, greedy as TGI would decode it
    assert fake_openai.bodies("/v1/completions") == [
        {"model": "fake-model", "prompt": GREEDY["inputs"], "max_tokens": 16, "temperature": 0.0}
    ]
    # And the answer has TGI's shape, with the server's text and token count
    assert answer == [
        {
            "generated_text": OPENAI_TEXT,
            "details": {"finish_reason": "length", "generated_tokens": 7, "seed": None, "prefill": [], "tokens": []},
        }
    ]


def test_openai_proxy_uses_the_configured_model_and_passes_sampling_parameters(fake_openai):
    # Given a configured model name
    with proxying(ProxyConfig(fake_openai.url, "openai", model="other-model")) as client:
        # When a sampling request with stop strings and a seed goes through
        invoke(client, {"inputs": "Hi", "parameters": {"temperature": 0.7, "top_p": 0.9, "top_k": 40, "stop": ["\n"], "seed": 5}})

    # Then that model is asked, sampling parameters pass, top_k (no OpenAI equivalent) is dropped
    assert fake_openai.bodies("/v1/models") == []
    assert fake_openai.bodies("/v1/completions") == [
        {"model": "other-model", "prompt": "Hi", "max_tokens": 20, "temperature": 0.7, "top_p": 0.9, "stop": ["\n"], "seed": 5}
    ]


@pytest.mark.parametrize(
    "choice, stop, expected",
    [
        ({"finish_reason": "length"}, None, "length"),
        ({"finish_reason": "stop"}, None, "eos_token"),
        ({"finish_reason": "stop", "stop_reason": None}, ["\n"], "eos_token"),
        ({"finish_reason": "stop", "stop_reason": "\n"}, ["\n"], "stop_sequence"),
    ],
    ids=["length", "stop", "stop-with-stop-strings-but-eos", "stop-on-a-stop-string"],
)
def test_openai_finish_reasons_map_to_tgi_ones(fake_openai, choice, stop, expected):
    # Given an OpenAI server ending its completion for the given reason
    fake_openai.routes[("POST", "/v1/completions")] = (200, {**OPENAI_ANSWER, "choices": [{"index": 0, "text": "x", **choice}]})
    parameters = {"details": True, **({"stop": stop} if stop else {})}

    # When a request goes through the proxy
    with proxying(ProxyConfig(fake_openai.url, "openai")) as client:
        answer = invoke(client, {"inputs": "Hi", "parameters": parameters})

    # Then TGI's finish_reason is reported
    assert answer[0]["details"]["finish_reason"] == expected


# -- the whole pipeline ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tgi", "openai"])
def test_run_file_in_proxy_mode_writes_the_upstream_text_for_every_line(fake_tgi, fake_openai, tmp_path, kind):
    # Given a two-line input file and the emulator configured to proxy to a fake upstream
    upstream, text = (fake_tgi, TGI_ANSWER["generated_text"]) if kind == "tgi" else (fake_openai, OPENAI_TEXT)
    source = tmp_path / "two.jsonl"
    source.write_bytes(jsonl({"id": "a", "prompt": "Capital of France?"}, {"id": "b", "prompt": "Capital of Italy?"}))
    config = EmulatorConfig(proxy=ProxyConfig(upstream.url, kind))

    # When the file runs through the local stack
    manifest = run_file(source, tmp_path / "out", timeout_s=60, emulator=config)

    # Then every line's output is the upstream's text
    results = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    assert manifest["status"] == "COMPLETED"
    assert [r["id"] for r in results] == ["a", "b"]
    assert [r["output"] for r in results] == [text, text]
    assert len(upstream.bodies("/generate" if kind == "tgi" else "/v1/completions")) == 2


# -- the command line -----------------------------------------------------------------------------------------


def test_sagebatch_run_with_5xx_faults_still_answers_every_line(tmp_path, capsys):
    # Given a three-line file and a 30 % container-error rate (seed 1 fails the very first request)
    source = tmp_path / "three.jsonl"
    source.write_bytes(jsonl({"prompt": "one"}, {"prompt": "two"}, {"prompt": "three"}))
    out = tmp_path / "out"

    # When `sagebatch run` processes it
    code = sagebatch_main(["run", str(source), "--out", str(out), "--fault-5xx", "0.3", "--fault-seed", "1"])

    # Then it succeeds, faults were injected, and the retries got every line an answer
    assert code == 0
    summary = re.search(r"emulator\s+(\d+) requests, (\d+) injected faults", capsys.readouterr().out)
    assert summary and int(summary[2]) >= 1
    results = [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(results) == 3 and all(r["status"] == "succeeded" and r["output"] for r in results)


def test_sagebatch_run_with_an_unreachable_proxy_fails_fast(tmp_path, capsys):
    # Given a proxy URL where nothing listens
    source = tmp_path / "one.jsonl"
    source.write_bytes(jsonl({"prompt": "one"}))

    # When `sagebatch run` is asked to use it
    code = sagebatch_main(["run", str(source), "--out", str(tmp_path / "out"), "--proxy", closed_port_url()])

    # Then it exits 1 with the reason, before running anything
    assert code == 1
    assert "cannot reach" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
