"""smg: a high-availability LLM model-routing gateway."""

__version__ = "0.1.0"
