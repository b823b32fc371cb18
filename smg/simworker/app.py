"""The simulated worker: an OpenAI-compatible engine served over ASGI.

It answers like an SGLang server (OpenAI routes, `/generate`, `/v1/loads`,
`/flush_cache`, server/model info) with token timing from `SimEngine` and
prefix-cache hits from `PrefixKVCache`, so routing quality can be measured
without a GPU. `/sim/stats` and `/sim/config` expose and steer it.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from smg.http.asgi import (
    SSE_CONTENT,
    BodyTooLarge,
    ClientDisconnected,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    send_json,
    send_text,
    serve_lifespan,
)
from smg.http.errors import GatewayError, load_json_object, missing_parameter
from smg.simworker.engine import Outcome, SimConfig, SimEngine
from smg.simworker.kvcache import tokenize
from smg.simworker.slots import PrefillSlots, prefill, running_slot

log = logging.getLogger("smg.sim")

MAX_BODY = 64 * 1024 * 1024
RECENT_REQUESTS = 64
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]


class InjectedDeath(Exception):
    """Raised mid-stream to make the server drop the connection like a dying engine."""


def chat_prompt(messages: Any) -> str:
    """Flatten chat messages to the text the engine would tokenize."""
    if not isinstance(messages, list):
        raise GatewayError(400, "invalid_value", "'messages' must be a list", param="messages")
    parts = []
    for message in messages:
        if not isinstance(message, dict):
            raise GatewayError(400, "invalid_value", "each message must be an object", param="messages")
        content = message.get("content")
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        parts.append(f"{message.get('role', 'user')}: {content or ''}")
    return "\n".join(parts)


def prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        return " ".join(str(p) for p in prompt)
    raise GatewayError(400, "invalid_value", "'prompt' must be a string or a list", param="prompt")


# Anthropic's error type by status (its clients read `error.type`), for `--hosted-api anthropic`.
ANTHROPIC_ERRORS = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 529: "overloaded_error"}  # fmt: skip
ANTHROPIC_ROUTES = frozenset({"/v1/models", "/v1/messages"})


def anthropic_error(error: GatewayError) -> dict[str, Any]:
    return {"type": "error", "error": {"type": ANTHROPIC_ERRORS.get(error.status, "api_error"), "message": error.message}}


_ENGINE_ONLY = frozenset(
    {
        "/health",
        "/health_generate",
        "/server_info",
        "/get_server_info",
        "/model_info",
        "/get_model_info",
        "/v1/loads",
        "/flush_cache",
    }
)


class SimWorker:
    """ASGI app of one simulated worker."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.engine = SimEngine(config)
        self._slots = trio.Semaphore(config.max_running)
        self._prefill_slots = PrefillSlots()
        self.created = int(time.time())
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_REQUESTS)  # what gateways sent, newest last
        self._routes: dict[tuple[str, str], Handler] = {
            ("GET", "/health"): self._health,
            ("GET", "/health_generate"): self._health,
            ("GET", "/v1/models"): self._models,
            ("GET", "/server_info"): self._server_info,
            ("GET", "/get_server_info"): self._server_info,
            ("GET", "/model_info"): self._model_info,
            ("GET", "/get_model_info"): self._model_info,
            ("GET", "/v1/loads"): self._loads,
            ("POST", "/flush_cache"): self._flush_cache,
            ("GET", "/sim/stats"): self._stats,
            ("GET", "/sim/config"): self._get_config,
            ("POST", "/sim/config"): self._set_config,
            ("GET", "/sim/requests"): self._requests,
            ("GET", "/sim/prefills"): self._prefills,
            ("DELETE", "/sim/prefills"): self._clear_prefills,
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/messages"): self._messages,
            ("POST", "/v1/completions"): self._completions,
            ("POST", "/generate"): self._generate,
            ("POST", "/v1/embeddings"): self._embeddings,
            ("POST", "/v1/rerank"): self._rerank,
            ("POST", "/rerank"): self._rerank,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        handler = self._routes.get((scope["method"], scope["path"]))
        hosted = bool(self.config.hosted_key) and not scope["path"].startswith("/sim/")
        shape = anthropic_error if hosted and self.config.hosted_api == "anthropic" else None
        try:
            if hosted:
                handler = self._as_provider(scope, handler)
            if handler is None:
                raise GatewayError(404, "not_found", f"no route {scope['method']} {scope['path']}")
            await handler(scope, receive, send)
        except GatewayError as error:
            await error.send(send, shape=shape)
        except BodyTooLarge as exc:
            await GatewayError(413, "request_body_too_large", str(exc)).send(send, shape=shape)
        except ClientDisconnected:
            pass

    def _as_provider(self, scope: Scope, handler: Handler | None) -> Handler | None:
        """`--hosted-key`: a provider's key check and its routes (the inference ones and the model
        list); `--hosted-api anthropic`: Anthropic's (its key header, its required version header,
        the Messages API alone)."""
        if self.config.hosted_api == "anthropic":
            if header(scope, b"x-api-key") != self.config.hosted_key.encode():
                raise GatewayError(401, "authentication_error", "invalid x-api-key")
            if not header(scope, b"anthropic-version"):
                raise GatewayError(400, "invalid_request_error", "anthropic-version: header is required")
            return handler if scope["path"] in ANTHROPIC_ROUTES else None
        if header(scope, b"authorization") != b"Bearer " + self.config.hosted_key.encode():
            raise GatewayError(
                401, "invalid_api_key", "Incorrect API key provided.", type="invalid_request_error"
            )  # OpenAI's answer to a wrong or missing key
        if scope["path"] in _ENGINE_ONLY:
            return None
        return handler

    async def _json_body(self, scope: Scope, receive: Receive) -> dict[str, Any]:
        body = load_json_object(await read_body(scope, receive, MAX_BODY))
        if not scope["path"].startswith("/sim/"):
            self.recent.append({"path": scope["path"], "body": body})
        return body

    # -- probes and info -------------------------------------------------

    async def _health(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.config.unhealthy:
            await send_text(send, 503, "unhealthy")
        else:
            await send_text(send, 200, "OK")

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.config.hosted_key and self.config.hosted_api == "anthropic":  # Anthropic's list, paged
            name = self.config.model
            listed = {"type": "model", "id": name, "display_name": name, "created_at": "2025-01-01T00:00:00Z"}
            await send_json(send, 200, {"data": [listed], "has_more": False, "first_id": name, "last_id": name})
            return
        model = {
            "id": self.config.model,
            "object": "model",
            "created": self.created,
            "owned_by": self.config.owned_by,
            "root": self.config.model,
            "max_model_len": 32768,
        }
        await send_json(send, 200, {"object": "list", "data": [model]})

    async def _server_info(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(
            send,
            200,
            {
                "model_path": self.config.model,
                "served_model_name": self.config.model,
                "max_running_requests": self.config.max_running,
                "max_total_num_tokens": self.config.cache_blocks * self.engine.cache.block_tokens,
                "page_size": self.engine.cache.block_tokens,
                "dp_size": 1,
                "version": "smg-sim",
            },
        )

    async def _model_info(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(
            send,
            200,
            {
                "model_path": self.config.model,
                "tokenizer_path": None,
                "is_generation": True,
                "model_type": "sim",
                "architectures": ["SimForCausalLM"],
            },
        )

    async def _loads(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, {"timestamp": time.time(), "dp_rank_count": 1, "loads": [self.engine.load_report()]})

    async def _flush_cache(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.engine.cache.flush()
        await send_text(send, 200, "Cache flushed.")

    async def _stats(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, self.engine.stats())

    async def _requests(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The last requests received, oldest first: lets tests check what a gateway sent."""
        await send_json(send, 200, {"requests": list(self.recent)})

    async def _prefills(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Every prefill kept, oldest first: the queue each request found, its wait and its work."""
        await send_json(send, 200, {"prefills": list(self.engine.prefills)})

    async def _clear_prefills(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.engine.prefills.clear()
        await send_json(send, 200, {"cleared": True})

    async def _get_config(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, self.config.as_dict())

    async def _set_config(self, scope: Scope, receive: Receive, send: Send) -> None:
        changes = await self._json_body(scope, receive)
        try:
            self.config.update(changes)
        except (TypeError, ValueError) as exc:
            raise GatewayError(400, "invalid_value", str(exc)) from None
        log.info("sim config changed: %s", changes)
        await send_json(send, 200, self.config.as_dict())

    # -- generation --------------------------------------------------------

    def _check_model(self, body: dict[str, Any], required: bool = True) -> None:
        model = body.get("model")
        if model is None:
            if required:
                raise missing_parameter("model")
            return
        if model != self.config.model:
            raise GatewayError(404, "model_not_found", f"model '{model}' is not served here", param="model")

    def _max_tokens(self, body: dict[str, Any], *keys: str) -> int:
        for key in keys:
            value = body.get(key)
            if value is not None:
                if not isinstance(value, int) or value < 0:
                    raise GatewayError(400, "invalid_value", f"'{key}' must be a non-negative integer", param=key)
                return value
        return self.config.output_tokens

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await self._json_body(scope, receive)
        self._check_model(body)
        if "messages" not in body:
            raise missing_parameter("messages")
        prompt = chat_prompt(body["messages"])
        count = self._max_tokens(body, "max_completion_tokens", "max_tokens")
        # the answer is cut by the client's limit ("length"), or ends as the model chose ("stop")
        limited = body.get("max_completion_tokens") is not None or body.get("max_tokens") is not None
        shape = _ChatShape("chatcmpl", "length" if limited else "stop")
        await self._generate_tokens(scope, receive, send, body, prompt, count, shape)

    async def _messages(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Anthropic's Messages API, natively (as vLLM and SGLang serve it)."""
        body = await self._json_body(scope, receive)
        self._check_model(body)
        if "messages" not in body:
            raise missing_parameter("messages")
        anthropic = bool(self.config.hosted_key) and self.config.hosted_api == "anthropic"
        if anthropic:
            _check_anthropic(body)
        system = body.get("system")
        if isinstance(system, list):
            system = " ".join(b.get("text", "") for b in system if isinstance(b, dict))
        prompt = chat_prompt(([{"role": "system", "content": system}] if system else []) + list(body["messages"]))
        count = self._max_tokens(body, "max_tokens")
        stop = "max_tokens"
        if anthropic and count > self.config.output_tokens:  # the model ends its turn before the client's limit
            count, stop = self.config.output_tokens, "end_turn"
        shape = _MessagesShape("msg", hosted=anthropic, stop=stop)
        await self._generate_tokens(scope, receive, send, body, prompt, count, shape)

    async def _completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await self._json_body(scope, receive)
        self._check_model(body)
        if "prompt" not in body:
            raise missing_parameter("prompt")
        prompt = prompt_text(body["prompt"])
        count = self._max_tokens(body, "max_tokens")
        await self._generate_tokens(scope, receive, send, body, prompt, count, _CompletionShape("cmpl"))

    async def _generate(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await self._json_body(scope, receive)
        self._check_model(body, required=False)
        if "text" in body:
            prompt = prompt_text(body["text"])
        elif "input_ids" in body:
            prompt = prompt_text(body["input_ids"])
        else:
            raise missing_parameter("text")
        params = body.get("sampling_params") or {}
        if not isinstance(params, dict):
            raise GatewayError(400, "invalid_value", "'sampling_params' must be an object")
        count = self._max_tokens(params, "max_new_tokens")
        await self._generate_tokens(scope, receive, send, body, prompt, count, _GenerateShape("gen"))

    async def _generate_tokens(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        body: dict[str, Any],
        prompt: str,
        count: int,
        shape: _Shape,
    ) -> None:
        engine = self.engine
        engine.requests += 1
        outcome = engine.decide(count)
        if outcome.fail:
            status, after = self.config.fail_status, self.config.fail_retry_after
            if status == 503 and self.config.hosted_key and self.config.hosted_api == "anthropic":
                status = 529  # Anthropic's "overloaded"
            headers = [(b"retry-after", str(after).encode())] if after and status in (429, 503, 529) else []
            raise GatewayError(status, "injected_failure", "simulated worker failure", headers=headers)
        if outcome.hang:
            await _wait_for_disconnect(receive)
            return
        tokens = tokenize(prompt)
        prompt_tokens = max(1, len(tokens))
        async with running_slot(engine, self._slots, prompt_tokens + count), trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_disconnect, receive, nursery.cancel_scope)  # a real engine aborts
            request_id = (header(scope, b"x-request-id") or b"").decode("latin-1")
            await self._run(
                send, body, prompt, tokens, prompt_tokens, count, shape, outcome, request_id
            )  # when its client leaves
            nursery.cancel_scope.cancel()

    async def _run(
        self,
        send: Send,
        body: dict[str, Any],
        prompt: str,
        tokens: list[str],
        prompt_tokens: int,
        count: int,
        shape: _Shape,
        outcome: Outcome,
        request_id: str,
    ) -> None:
        engine = self.engine
        slots = self._prefill_slots.current(self.config.prefill_slots)
        cached = await prefill(engine, slots, tokens, prompt_tokens, request_id, held=prompt_tokens + count)
        words = engine.output_words(prompt, count)
        engine.completion_tokens += count
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": count,
            "total_tokens": prompt_tokens + count,
            "prompt_tokens_details": {"cached_tokens": cached},
        }
        retained = tokens + shape.continuation(words)
        if body.get("stream"):
            await self._stream(send, body, words, usage, shape, outcome.die_after_tokens, retained)
        else:
            tpot = engine.tpot_secs()
            if tpot > 0 and count:
                await trio.sleep(tpot * count)
            engine.cache.retain(retained)  # decoding is done; the answer's last bytes follow
            await send_json(send, 200, shape.full(self.config.model, words, usage))

    async def _stream(
        self,
        send: Send,
        body: dict[str, Any],
        words: list[str],
        usage: dict[str, Any],
        shape: _Shape,
        die_after: int | None,
        retained: list[str],
    ) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [SSE_CONTENT, (b"cache-control", b"no-cache")]})
        model = self.config.model
        opts = body.get("stream_options")
        include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
        events = shape.stream(model, words, usage, include_usage)
        for index, event in enumerate(events):
            if die_after is not None and index > die_after:
                # a dying engine stops wherever its output is: here half-way through an event
                await send({"type": "http.response.body", "body": event[: len(event) // 2], "more_body": True})
                raise InjectedDeath("simulated worker died mid-stream")
            if index and index <= len(words):
                tpot = self.engine.tpot_secs()
                if tpot > 0:
                    await trio.sleep(tpot)
            await send({"type": "http.response.body", "body": event, "more_body": True})
        self.engine.cache.retain(retained)
        await send({"type": "http.response.body", "body": shape.end, "more_body": False})

    # -- embeddings and rerank ---------------------------------------------

    async def _embeddings(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await self._json_body(scope, receive)
        self._check_model(body)
        if "input" not in body:
            raise missing_parameter("input")
        raw = body["input"]
        inputs = [raw] if isinstance(raw, str) or (isinstance(raw, list) and raw and isinstance(raw[0], int)) else raw
        if not isinstance(inputs, list):
            raise GatewayError(400, "invalid_value", "'input' must be a string or a list", param="input")
        texts = [prompt_text(item) for item in inputs]
        tokens = sum(max(1, len(tokenize(t))) for t in texts)
        self.engine.requests += 1
        data = [{"object": "embedding", "index": i, "embedding": self.engine.embedding(text)} for i, text in enumerate(texts)]
        await send_json(
            send,
            200,
            {
                "object": "list",
                "data": data,
                "model": self.config.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )

    async def _rerank(self, scope: Scope, receive: Receive, send: Send) -> None:
        """SGLang's rerank answer: a bare list of {score, document, index}, best first."""
        body = await self._json_body(scope, receive)
        query, documents = body.get("query"), body.get("documents")
        if not isinstance(query, str):
            raise missing_parameter("query")
        if not isinstance(documents, list) or not all(isinstance(d, str) for d in documents):
            raise missing_parameter("documents")
        self.engine.requests += 1
        query_tokens = set(tokenize(query.lower()))
        results = []
        for index, document in enumerate(documents):
            doc_tokens = set(tokenize(document.lower()))
            union = query_tokens | doc_tokens
            score = len(query_tokens & doc_tokens) / len(union) if union else 0.0
            results.append({"score": round(score, 6), "document": document, "index": index})
        results.sort(key=lambda r: (-r["score"], r["index"]))
        await send_json(send, 200, results)


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _cancel_on_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
    await _wait_for_disconnect(receive)
    scope.cancel()


class _Shape:
    """How one API family frames a generation, whole or as SSE events."""

    end = b"data: [DONE]\n\n"  # the stream's last bytes

    def __init__(self, prefix: str, finish: str = "length") -> None:
        self.id = f"{prefix}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.finish = finish  # the chat finish_reason

    def full(self, model: str, words: list[str], usage: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def continuation(self, words: list[str]) -> list[str]:
        """The tokens a follow-up prompt carries after this one: the answer (and its role)."""
        return words

    def stream(self, model: str, words: list[str], usage: dict[str, Any], include_usage: bool) -> list[bytes]:
        raise NotImplementedError


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _piece(words: list[str], i: int) -> str:
    return words[i] if i == 0 else " " + words[i]


class _ChatShape(_Shape):
    def continuation(self, words: list[str]) -> list[str]:
        return ["assistant:", *words]  # chat_prompt writes the next turn as "assistant: <answer>"

    def full(self, model: str, words: list[str], usage: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": " ".join(words)},
                    "finish_reason": self.finish,
                }
            ],
            "usage": usage,
        }

    def stream(self, model: str, words: list[str], usage: dict[str, Any], include_usage: bool) -> list[bytes]:
        head = f'data: {{"id":"{self.id}","object":"chat.completion.chunk","created":{self.created},"model":"{model}","choices":[{{"index":0,"delta":'
        events = [(head + '{"role":"assistant","content":""},"finish_reason":null}]}\n\n').encode()]
        for i in range(len(words)):
            events.append((head + '{"content":' + json.dumps(_piece(words, i)) + '},"finish_reason":null}]}\n\n').encode())
        events.append((head + '{},"finish_reason":' + json.dumps(self.finish) + "}]}\n\n").encode())
        if include_usage:
            events.append(
                _sse(
                    {
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": model,
                        "choices": [],
                        "usage": usage,
                    }
                )
            )
        return events


class _CompletionShape(_Shape):
    def full(self, model: str, words: list[str], usage: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": model,
            "choices": [{"index": 0, "text": " ".join(words), "logprobs": None, "finish_reason": "length"}],
            "usage": usage,
        }

    def stream(self, model: str, words: list[str], usage: dict[str, Any], include_usage: bool) -> list[bytes]:
        def chunk(text: str, finish: str | None) -> bytes:
            return _sse(
                {
                    "id": self.id,
                    "object": "text_completion",
                    "created": self.created,
                    "model": model,
                    "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
                }
            )

        events = [chunk("", None)]
        events.extend(chunk(_piece(words, i), None) for i in range(len(words)))
        events.append(chunk("", "length"))
        if include_usage:
            events.append(
                _sse(
                    {
                        "id": self.id,
                        "object": "text_completion",
                        "created": self.created,
                        "model": model,
                        "choices": [],
                        "usage": usage,
                    }
                )
            )
        return events


class _GenerateShape(_Shape):
    def _meta(self, usage: dict[str, Any], count: int, done: bool) -> dict[str, Any]:
        return {
            "id": self.id,
            "prompt_tokens": usage["prompt_tokens"],
            "completion_tokens": count,
            "cached_tokens": usage["prompt_tokens_details"]["cached_tokens"],
            "finish_reason": {"type": "length", "length": count} if done else None,
        }

    def full(self, model: str, words: list[str], usage: dict[str, Any]) -> dict[str, Any]:
        return {"text": " ".join(words), "meta_info": self._meta(usage, len(words), True)}

    def stream(self, model: str, words: list[str], usage: dict[str, Any], include_usage: bool) -> list[bytes]:
        events = [_sse({"text": "", "meta_info": self._meta(usage, 0, False)})]
        for i in range(len(words)):
            done = i == len(words) - 1
            events.append(_sse({"text": " ".join(words[: i + 1]), "meta_info": self._meta(usage, i + 1, done)}))
        return events


def _check_anthropic(body: dict[str, Any]) -> None:
    """What Anthropic's API refuses and an engine's Messages route may let by: a missing
    `max_tokens`, a role other than user and assistant, a turn that is not text or blocks."""
    if not isinstance(body.get("max_tokens"), int):
        raise GatewayError(400, "invalid_request_error", "max_tokens: Field required")
    turns = body.get("messages")
    if not isinstance(turns, list) or not turns:
        raise GatewayError(400, "invalid_request_error", "messages: at least one message is required")
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("role") not in ("user", "assistant"):
            raise GatewayError(400, "invalid_request_error", f"messages.{i}.role: Input should be 'user' or 'assistant'")
        content = turn.get("content")
        if not isinstance(content, str) and not (
            isinstance(content, list) and all(isinstance(b, dict) and "type" in b for b in content)
        ):
            raise GatewayError(400, "invalid_request_error", f"messages.{i}.content: Input should be text or content blocks")


class _MessagesShape(_ChatShape):
    """Anthropic's message object and its SSE events. `hosted`: usage as Anthropic's own API
    counts it, the cached prompt tokens apart from `input_tokens`."""

    def __init__(self, prefix: str, hosted: bool = False, stop: str = "max_tokens") -> None:
        super().__init__(prefix)
        self.hosted = hosted
        self.stop = stop

    def _usage(self, usage: dict[str, Any], output: int) -> dict[str, Any]:
        if not self.hosted:
            return {"input_tokens": usage["prompt_tokens"], "output_tokens": output}
        cached = usage["prompt_tokens_details"]["cached_tokens"]
        return {"input_tokens": usage["prompt_tokens"] - cached, "cache_read_input_tokens": cached, "output_tokens": output}

    end = _sse({"type": "message_stop"}).replace(b"data: ", b"event: message_stop\ndata: ", 1)

    def full(self, model: str, words: list[str], usage: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": " ".join(words)}],
            "stop_reason": self.stop,
            "stop_sequence": None,
            "usage": self._usage(usage, usage["completion_tokens"]),
        }

    def stream(self, model: str, words: list[str], usage: dict[str, Any], include_usage: bool) -> list[bytes]:
        def event(kind: str, **fields: Any) -> bytes:
            return f"event: {kind}\n".encode() + _sse({"type": kind, **fields})

        message = {**self.full(model, [], usage), "content": [], "stop_reason": None}
        message["usage"] = self._usage(usage, 0)
        events = [event("message_start", message=message)]
        events.append(event("content_block_start", index=0, content_block={"type": "text", "text": ""}))
        for i in range(len(words)):
            events.append(event("content_block_delta", index=0, delta={"type": "text_delta", "text": _piece(words, i)}))
        events.append(event("content_block_stop", index=0))
        events.append(
            event(
                "message_delta",
                delta={"stop_reason": self.stop, "stop_sequence": None},
                usage={"output_tokens": usage["completion_tokens"]},
            )
        )
        return events
