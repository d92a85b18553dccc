"""Bulk jobs: a file, a table or a list of inputs scored in chunks by the workers.

``service`` is the entry point (create, read, cancel, end); ``ingest`` turns a byte stream into
stored chunks; ``runner`` runs one chunk in a worker; ``results`` streams them back out;
``sweep`` finds chunks whose message or worker was lost.
"""
