"""serve.py's framework-free parts: the continuous-batching engine, OpenAI's request and response formats,
the HTTP app (Starlette) and the chat page. The backends supply only a RowBatch (core.generate)."""
