"""The OpenAI-compatible surface: ``/v1/embeddings`` and the Batch API (``/v1/files``,
``/v1/batches``) on inferq's own durable paths (predictions and jobs).

Nothing here speaks HTTP: ``api/routes/openai_*.py`` are the adapters. ``wire`` knows OpenAI's
shapes (the error body, which status an inferq error is), ``embeddings`` the request and the
response of the embeddings endpoint, ``tokens`` how many tokens a text is, ``files`` the files
store, ``batch_plan`` / ``batch_render`` how an input file becomes a job and its results the
output and error files, and ``batches`` a batch's life.
"""
