"""The data plane: an inference request from its parsed body to the worker's answer.

`routes` names the OpenAI-compatible inference routes, `dispatch` admits a
request (tenant limits, admission) and `attempts` runs the attempt loop: worker
choice, retries with backoff, first-byte and stall timeouts, breaker bookkeeping,
SSE relay. The stateful APIs in `smg.apis` call `dispatch` for their inner chat
completions.
"""
