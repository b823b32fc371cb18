"""HTTP mechanics shared by every route: ASGI helpers, the per-request `Exchange`,
OpenAI-shaped errors, SSE framing, request-body models and the accept loop over
hypercorn. Knows nothing of routing, workers' state or APIs' semantics."""
