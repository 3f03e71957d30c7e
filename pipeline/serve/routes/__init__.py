"""The REST API's routers, one module per resource (identities, recognition, review,
operations), each a module-level ``router`` over the shared context
(:mod:`pipeline.serve.context`)."""
