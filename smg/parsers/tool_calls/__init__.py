"""Tool-call parsers, one module per format family of the reference's names.

Each is a ``ToolParser`` (``base``): sans-IO and streaming, text in, content and OpenAI-shaped
tool-call deltas out, with ``parse`` for a whole output. ``smg.parsers.registry`` maps the
reference's ``--tool-call-parser`` names onto them.
"""
