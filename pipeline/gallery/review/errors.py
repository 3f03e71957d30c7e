"""The review loop's refusals (each maps to its HTTP status in the REST API and the UI)."""

from __future__ import annotations

from pipeline.gallery.errors import GalleryError


class EventNotFound(GalleryError):
    code = "event_not_found"
    http_status = 404


class ClusterNotFound(GalleryError):
    code = "cluster_not_found"
    http_status = 404


class NameTaken(GalleryError):
    code = "name_taken"
    http_status = 409


class FeedbackRefused(GalleryError):
    code = "feedback_refused"
    http_status = 409
