"""HTTP mechanics shared by every route: ASGI helpers, the per-request `Exchange`,
OpenAI-shaped errors, SSE framing, request-body models, and the HTTP/1.1 server
(`h1`: the protocol, sans-IO; `server`: accept loop and connections on trio). Knows nothing of routing, workers' state or APIs' semantics."""
