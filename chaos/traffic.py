"""Client traffic with the official `openai` client, spread over the gateways as an L4 balancer would.

Threads share a request schedule (`rate` per second). Each request goes to
the next gateway in turn, skipping gateways whose `/readiness` did not
answer 200 at the last check (every 0.5 s, as a balancer's health check);
a gateway that refuses the connection is skipped too and the request goes
to the next one. Only a connection never made is re-sent: a request that
went out and then lost its connection (a reset, a close before the answer)
is a failure, as the client would see it. Half the requests stream. Every outcome is recorded with its gateway
and times so failures can be classified against the fault timeline.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from dataclasses import dataclass, field

import httpx
import openai

from chaos.cluster import ADMIN_KEY, LIMITED_KEY, Cluster


@dataclass
class Outcome:
    gateway: int
    started: float
    ended: float
    stream: bool
    ok: bool
    first_byte: bool = False  # a stream had started when it failed
    error: str = ""
    rerouted: int = 0  # gateways skipped because they refused the connection


@dataclass
class Traffic:
    cluster: Cluster
    rate: float = 10.0
    threads: int = 6
    seed: int = 1
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)
    ready: list[bool] = field(default_factory=list)
    limited_rate: float = 3.0  # requests per second from the rate-limited tenant
    limited: list[tuple[float, int]] = field(default_factory=list)  # (wall time sent, status; 0 = no answer)

    def start(self) -> None:
        self.ready = [True] * self.cluster.gateways
        checker = threading.Thread(target=self._health_checks, daemon=True)
        checker.start()
        self._workers.append(checker)
        self._next_gateway = itertools.cycle(range(self.cluster.gateways))
        self._ticket = itertools.count()
        self._begin = time.monotonic()
        limited = threading.Thread(target=self._limited, daemon=True)
        limited.start()
        self._workers.append(limited)
        for n in range(self.threads):
            thread = threading.Thread(target=self._run, args=(random.Random(self.seed * 1000 + n),), daemon=True)
            thread.start()
            self._workers.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join(60)

    def _health_checks(self) -> None:
        with httpx.Client(timeout=0.5) as client:
            while not self._stop.is_set():
                for i in range(self.cluster.gateways):
                    try:
                        self.ready[i] = client.get(self.cluster.url(i) + "/readiness").status_code == 200
                    except httpx.HTTPError:
                        self.ready[i] = False
                self._stop.wait(0.5)

    def _run(self, rng: random.Random) -> None:
        clients = [
            openai.OpenAI(base_url=self.cluster.url(i) + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=30)
            for i in range(self.cluster.gateways)
        ]
        while not self._stop.is_set():
            with self._lock:
                due = self._begin + next(self._ticket) / self.rate
                first = next(self._next_gateway)
            time.sleep(max(0.0, due - time.monotonic()))
            if self._stop.is_set():
                return
            outcome = self._one(clients, first, rng.random() < 0.5, rng.randrange(10**6))
            with self._lock:
                self.outcomes.append(outcome)

    def _limited(self) -> None:
        """The limited tenant's requests, each to the next ready gateway: admitted (200) or 429."""
        body = {"model": "sim-model", "messages": [{"role": "user", "content": "limited"}], "max_tokens": 2}
        headers = {"authorization": f"Bearer {LIMITED_KEY}"}
        begin = time.monotonic()
        with httpx.Client(timeout=30) as client:  # as the openai client's: a SIGSTOPped gateway answers late
            for first in itertools.count():
                if self._stop.wait(max(0.0, begin + first / self.limited_rate - time.monotonic())):
                    return
                for hop in range(self.cluster.gateways):
                    i = (first + hop) % self.cluster.gateways
                    if not self.ready[i] and hop < self.cluster.gateways - 1:
                        continue
                    sent = time.time()
                    try:
                        status = client.post(self.cluster.url(i) + "/v1/chat/completions", json=body, headers=headers).status_code
                    except httpx.ConnectError:
                        continue
                    except httpx.HTTPError:
                        status = 0
                    self.limited.append((sent, status))
                    break

    def _one(self, clients: list[openai.OpenAI], first: int, stream: bool, tag: int) -> Outcome:
        messages = [{"role": "user", "content": f"chaos request {tag}: " + "tell me a story " * 8}]
        started = time.monotonic()
        gateways = self.cluster.gateways
        order = [(first + hop) % gateways for hop in range(gateways)]
        order = [i for i in order if self.ready[i]] + [i for i in order if not self.ready[i]]
        for hop, i in enumerate(order):
            outcome = Outcome(i, started, started, stream, False, rerouted=hop)
            try:
                if stream:
                    chunks = clients[i].chat.completions.create(model="sim-model", messages=messages, max_tokens=24, stream=True)
                    for _ in chunks:
                        outcome.first_byte = True
                else:
                    clients[i].chat.completions.create(model="sim-model", messages=messages, max_tokens=24)
                outcome.ok = True
            except openai.APIConnectionError as exc:
                if _refused(exc) and not outcome.first_byte:
                    continue  # refused: the balancer sends it to the next gateway
                outcome.error = f"connection: {exc.__cause__ or exc}"
            except openai.APIStatusError as exc:
                outcome.error = f"status {exc.status_code}: {exc.message[:120]}"
            except openai.APIError as exc:  # an error event in a stream
                outcome.error = f"api error: {str(exc)[:120]}"
            outcome.ended = time.monotonic()
            return outcome
        return Outcome(first, started, time.monotonic(), stream, False, error="every gateway refused", rerouted=gateways)


def _refused(exc: BaseException) -> bool:
    """The connection was never made (the gateway is down): safe to send elsewhere."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, (httpx.ConnectError, ConnectionRefusedError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
