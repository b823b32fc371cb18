"""The gateway's gRPC side for inference engines: `client` (the RPCs, trio over grpc.aio),
`convert` and `status` (sans-IO: messages and errors), `tokenizers` (each model's tokenizer),
`fleet` (the node's loop thread and clients, the registrar's probe of `grpc://` workers)."""
