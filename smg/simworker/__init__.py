"""Simulated OpenAI-compatible workers with a prefix KV-cache model (a product feature)."""
