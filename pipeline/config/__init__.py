"""Every section of the facestream settings, one module each, and the one loader.

``pipeline.config.settings`` holds ``Settings`` and ``load_settings``. This package
file imports nothing, so the face core can import ``pipeline.config.face`` alone
without loading the Kafka, Milvus or training sections.
"""
