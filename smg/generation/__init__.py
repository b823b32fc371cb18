"""The gateway as a full server for gRPC workers (sans-IO): what an engine is asked and answers
(`types`), OpenAI requests turned into engine requests (`requests`), and engine outputs turned
into OpenAI answers and stream chunks (`outputs`). The trio shells are `smg.upstream.grpc` (the
RPCs) and `smg.dataplane.engine` (the attempt on a gRPC worker)."""
