"""The web UI of the gallery and the review loop: server-rendered pages (Jinja2, a little
vanilla CSS and JS, nothing from a CDN) served by the REST app under ``/ui``."""

from pipeline.serve.web.router import web_router

__all__ = ["web_router"]
