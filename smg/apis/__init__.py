"""The stateful client APIs built on the data plane: OpenAI Responses and
Conversations (`openai/`), Anthropic Messages (`anthropic/`), the chat completion
the gateway sends through its own data plane (`chat`), and the pure translations
between their shapes and chat completions (`*_format`)."""
