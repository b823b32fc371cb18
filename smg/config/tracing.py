"""Distributed tracing: OpenTelemetry spans exported over OTLP."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from smg.observability.tracing import parse_endpoint
from smg.settings import ConfigError, setting

G_TRACING = "tracing"


@dataclass(frozen=True)
class TracingSettings:
    GROUP: ClassVar[str] = G_TRACING

    enable_trace: bool = setting(
        False,
        "--enable-trace",
        help="OpenTelemetry spans for each request (admission, routing, attempts, storage), continuing a "
        "client's traceparent and sending it on to the worker",
    )
    otlp_traces_endpoint: str = setting(
        "localhost:4317",
        "--otlp-traces-endpoint",
        metavar="HOST:PORT",
        help="the OpenTelemetry collector's OTLP/gRPC endpoint, with --enable-trace: HOST:PORT (or http://HOST:PORT) "
        "in plain gRPC, https://HOST:PORT over TLS",
    )

    def validate_tracing(self) -> None:
        """The checks that involve several tracing settings: the endpoint only matters, and so
        is only refused, with --enable-trace (the reference ignores it otherwise)."""
        if self.enable_trace:
            try:
                parse_endpoint(self.otlp_traces_endpoint)
            except ValueError as exc:
                raise ConfigError(f"--otlp-traces-endpoint: {exc}") from None
