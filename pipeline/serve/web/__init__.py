"""The web UI of the gallery and the review loop: server-rendered pages (Jinja2, a little
vanilla CSS and JS, nothing from a CDN) served by the REST app under ``/ui``: one router
module per section (``session``, ``identities``, ``review``) over shared page helpers
(``pages``) and browser sessions (``auth``)."""

from fastapi import APIRouter

from pipeline.serve.web import identities, review, session


def web_router() -> APIRouter:
    router = APIRouter()
    for part in (session.static_router, session.router, identities.router, review.router):
        router.include_router(part)
    return router


__all__ = ["web_router"]
