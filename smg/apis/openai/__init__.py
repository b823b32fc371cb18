"""OpenAI's stateful APIs: Responses (with `previous_response_id` chains and
background responses) and Conversations, over the history store."""
