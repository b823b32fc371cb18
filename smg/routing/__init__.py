"""Choosing a worker: load-balancing policies and the prefix state they keep (radix
trees, the chain-hash index, a request's routing text, the optional tokenizer).
All sans-IO: a policy sees workers and a `RequestInfo` and returns a worker."""
