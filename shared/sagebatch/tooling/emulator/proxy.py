"""Proxy mode: the emulator's "container" is a real model server, so `sagebatch run` returns real text.

The emulator keeps playing SageMaker (routing, fault knobs, the admission limit, ModelError wrapping); this
module only plays the TGI container behind it. `Proxy.invoke` takes an `/invocations` body and returns what
TGI's `/invocations` would have answered, as `(status, body text)`:

- 200 and `[{"generated_text": ..., "details": {...}}]` on success;
- the upstream's own status and body, verbatim, when it answers non-2xx (server.py wraps it in a ModelError
  exactly as SageMaker wraps a container error);
- status 0 when the upstream gave no answer within `timeout_s` (server.py sends SageMaker's "invocation
  timed out" ModelError, OriginalStatusCode 0);
- 502 with a TGI-style JSON body when the upstream cannot be reached or answers nonsense: a container that is
  down is a server-side fault, and 502 makes the caller retry it with backoff like any 5xx.

There is deliberately **no local validation** (no token-length or parameter checks): the upstream is
authoritative, because it may serve a different model, tokenizer and limits than the 8191/8192 the emulator
assumes for Mistral on TGI 1.1.

Upstream kinds:

- `tgi`: `POST <url>/generate` with the body unchanged; TGI's bare object is wrapped in a list as the
  `/invocations` route does (protocol.md 4).
- `openai`: `POST <url>/v1/completions`, see `completion_request` and `tgi_answer` for what is mapped.

Only the standard library is used, and the upstream is reached directly (HTTP(S)_PROXY variables are
ignored: the target is typically a model server on this machine).
"""

from __future__ import annotations

import http.client
import json
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

# SageMaker gives the container 60 s (protocol.md 7.1). The runtime client waits 70 s (endpoint.py), so a
# 60 s upstream limit lets the emulator answer with SageMaker's timeout error before the client gives up.
DEFAULT_TIMEOUT_S = 60.0
KINDS = ("tgi", "openai")
TGI_DEFAULT_MAX_NEW_TOKENS = 20  # TGI 1.1.0's default; the OpenAI upstream stands in for TGI, so keep it

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class ProxyConfig:
    """Where proxy mode forwards to. `model` is for `openai` only (default: the first id of GET /v1/models)."""

    url: str
    kind: str = "tgi"
    model: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"proxy kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"proxy URL must start with http:// or https://, not {self.url!r}")
        if self.timeout_s <= 0:
            raise ValueError("proxy timeout must be > 0")
        object.__setattr__(self, "url", self.url.rstrip("/"))


class UpstreamError(Exception):
    """The upstream did not give a usable answer; carries what the container answers instead."""

    def __init__(self, status: int, body: str):
        super().__init__(body or f"status {status}")
        self.status = status
        self.body = body


class Proxy:
    """The TGI container, played by an upstream server. Thread-safe."""

    def __init__(self, config: ProxyConfig):
        self.config = config
        self._model = config.model
        self._model_lock = threading.Lock()

    def invoke(self, raw_body: bytes) -> tuple[int, str]:
        try:
            if self.config.kind == "tgi":
                return 200, json.dumps(_as_list(self._json("POST", "/generate", raw_body)))
            return self._openai(raw_body)
        except UpstreamError as error:
            return error.status, error.body

    def check(self) -> str:
        """Reach the upstream once (to fail fast before a run); return a one-line description of it."""
        if self.config.kind == "tgi":
            status, _ = self._request("GET", "/health", None)  # any HTTP answer proves the server is there
            if status == 0:
                raise UpstreamError(0, f"no answer from {self.config.url}/health within {self.config.timeout_s:g} s")
            return f"TGI server at {self.config.url}"
        models = self._json("GET", "/v1/models", None)
        with self._model_lock:
            self._model = self._model or _first_model(models)
        return f"OpenAI-compatible server at {self.config.url}, model {self._model!r}"

    def model(self) -> str:
        """The model name sent to an OpenAI-compatible server: the configured one, else the first it lists."""
        with self._model_lock:
            if self._model is None:
                self._model = _first_model(self._json("GET", "/v1/models", None))
            return self._model

    def _openai(self, raw_body: bytes) -> tuple[int, str]:
        # Unlike `tgi`, the body must be read to translate it; malformed bodies get TGI's (axum's) plain-text answers.
        try:
            body = json.loads(raw_body)
        except ValueError as error:
            return 400, f"Failed to parse the request body as JSON: {error}"
        parameters = (body.get("parameters") or {}) if isinstance(body, dict) else None
        if not isinstance(parameters, dict) or not isinstance(body.get("inputs"), str):
            return 422, "Failed to deserialize the JSON body into the target type: inputs or parameters: invalid type"
        request = completion_request(self.model(), body["inputs"], parameters)
        completion = self._json("POST", "/v1/completions", json.dumps(request).encode())
        try:
            return 200, json.dumps([tgi_answer(body["inputs"], parameters, completion)])
        except (KeyError, IndexError, TypeError, ValueError):
            raise _bad_answer("the /v1/completions answer has no choices[0].text") from None

    def _json(self, method: str, path: str, body: bytes | None) -> Any:
        status, text = self._request(method, path, body)
        if not 200 <= status < 300:
            raise UpstreamError(status, text)
        try:
            return json.loads(text)
        except ValueError:
            raise _bad_answer(f"{method} {path} answered with non-JSON text") from None

    def _request(self, method: str, path: str, body: bytes | None) -> tuple[int, str]:
        """One HTTP exchange: (status, body text); 0 means no answer in time; unreachable raises UpstreamError(502)."""
        url = self.config.url + path
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        request = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with _OPENER.open(request, timeout=self.config.timeout_s) as response:
                return response.status, response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as error:  # a non-2xx answer is the upstream's own error: pass it on verbatim
            text = error.read().decode("utf-8", "replace")
            error.close()
            return error.code, text
        except TimeoutError:
            return 0, ""
        except urllib.error.URLError as error:
            if isinstance(error.reason, TimeoutError):
                return 0, ""
            raise _unreachable(url, error.reason) from None
        except (http.client.HTTPException, OSError) as error:  # e.g. the server closed the connection mid-answer
            raise _unreachable(url, error) from None


def completion_request(model: str, inputs: str, p: dict[str, Any]) -> dict[str, Any]:
    """TGI parameters -> an OpenAI /v1/completions body.

    Mapped: inputs -> prompt, max_new_tokens -> max_tokens (TGI's default 20 when absent), temperature, top_p,
    stop, seed. TGI decodes greedily unless sampling is on (do_sample, or any of temperature/top_k/top_p/
    typical_p set), while OpenAI samples at temperature 1 by default, so a greedy TGI request becomes
    temperature 0. Dropped (no OpenAI equivalent, or not accepted by every OpenAI-compatible server): top_k,
    typical_p, repetition_penalty, do_sample (folded into temperature), truncate, best_of, watermark,
    top_n_tokens, decoder_input_details. return_full_text and details are applied to the answer locally.
    """
    sampling = bool(p.get("do_sample")) or any(p.get(k) is not None for k in ("temperature", "top_k", "top_p", "typical_p"))
    temperature = p["temperature"] if p.get("temperature") is not None else (1.0 if sampling else 0.0)
    request: dict[str, Any] = {
        "model": model,
        "prompt": inputs,
        "max_tokens": p.get("max_new_tokens") or TGI_DEFAULT_MAX_NEW_TOKENS,
        "temperature": temperature,
    }
    for name in ("top_p", "stop", "seed"):
        if p.get(name) not in (None, []):
            request[name] = p[name]
    return request


def tgi_answer(inputs: str, p: dict[str, Any], completion: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI completion -> TGI's answer object.

    finish_reason: "length" -> "length"; anything else -> "eos_token", except "stop_sequence" when the request
    had stop strings and the server names the one it matched (vLLM's `stop_reason`). Note that OpenAI servers
    cut the stop string from the text, while TGI keeps it. generated_tokens is usage.completion_tokens as the
    server reports it (0 if it reports no usage). `details` is included only when asked for, as TGI does.
    """
    choice = completion["choices"][0]
    text = str(choice["text"])
    if choice.get("finish_reason") == "length":
        finish_reason = "length"
    elif p.get("stop") and isinstance(choice.get("stop_reason"), str):
        finish_reason = "stop_sequence"
    else:
        finish_reason = "eos_token"
    item: dict[str, Any] = {"generated_text": inputs + text if p.get("return_full_text") else text}
    if p.get("details"):
        item["details"] = {
            "finish_reason": finish_reason,
            "generated_tokens": int((completion.get("usage") or {}).get("completion_tokens") or 0),
            "seed": p.get("seed"),
            "prefill": [],
            "tokens": [],
        }
    return item


def _first_model(models: Any) -> str:
    try:
        return str(models["data"][0]["id"])
    except (KeyError, IndexError, TypeError):
        raise _bad_answer("GET /v1/models listed no model; pass --proxy-model") from None


def _as_list(answer: Any) -> list[Any]:
    """TGI's /generate answers a bare object; the /invocations route answers a one-element list."""
    return answer if isinstance(answer, list) else [answer]


def _error_body(message: str) -> str:
    return json.dumps({"error": f"sagebatch emulator proxy: {message}", "error_type": "proxy"})


def _unreachable(url: str, reason: object) -> UpstreamError:
    return UpstreamError(502, _error_body(f"cannot reach {url}: {reason}"))


def _bad_answer(message: str) -> UpstreamError:
    return UpstreamError(502, _error_body(message))
