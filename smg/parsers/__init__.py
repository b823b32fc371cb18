"""Streaming parsers of a model's output text: tool calls and reasoning, by the reference's parser
names. Sans-IO: text deltas in, content / reasoning / tool-call deltas out.

With gRPC workers the gateway sees the model's raw text and must split it into OpenAI's
``content``, ``reasoning_content`` and ``tool_calls`` itself, streamed and not. One parser object
per choice, fed the detokenized text deltas:

* ``reasoning``: ``ReasoningParser``: ``push(text) -> (reasoning_delta, content_delta)``,
  ``finish()``, ``parse(text)``; one configurable ``<think>`` machine serves every name.
* ``tool_calls``: one module per format family; a ``ToolParser``: ``push(text) -> list[Delta]``
  (content, or a ``ToolCallDelta`` in OpenAI's streamed ``tool_calls[]`` shape), ``finish()``,
  ``parse(text) -> (content, tool_calls)``.
* ``output.OutputParser``: the two chained, reasoning first, as the reference chains them.
* ``registry``: the reference's ``--tool-call-parser`` / ``--reasoning-parser`` names (implemented,
  refused as "not supported by smg", or unknown) and the defaults chosen from a model id.
* ``types``: the deltas, ``ToolCall``, and ``fold`` (a stream's deltas -> the whole output).

Every decision depends on the text only, never on how it was cut into pieces, so any chunking
folds to the one-shot ``parse`` (``tests/property/test_parser_chunkings.py``).
"""
