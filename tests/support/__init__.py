"""Helpers shared by the tests (the fixtures themselves are in tests/conftest.py):

- ``stores``: private corners of the session's Milvus server, databases on its PostgreSQL;
- ``models``: the session's two-version model store and private copies of it;
- ``gallery``: galleries on those stores, LFW people, tight crops;
- ``stream``: the shared clip, per-test stream settings and environment;
- ``wait``: one wait-until;
- ``servers``: an ASGI app served on a free loopback port.
"""
