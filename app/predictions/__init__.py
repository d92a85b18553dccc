"""The prediction, inferq's core concept: accepting (``service``), validating inputs
(``inputs``), executing batches (``executor``), the public view (``views``) and sweeping lost
work (``sweeper``)."""
