"""The offline model swap: this process re-embeds the gallery and flips its alias.

A :class:`pipeline.models.promotion.Swap` for ``facestream models promote|rollback``
when no pipeline is running (a running one swaps through ``pipeline.serve.swap``).
"""

from __future__ import annotations

from typing import Any

from pipeline.gallery.service import Gallery


class GallerySwap:
    def __init__(self, gallery: Gallery) -> None:
        self.gallery = gallery

    def serving(self) -> str | None:
        snap = self.gallery.active()
        return snap.version if snap is not None else None

    def switch(self, old: str | None, new: str) -> dict[str, Any]:
        """Build ``new``'s collection from the stored crops while ``old``'s keeps serving,
        then flip the alias (skipped when it already points at ``new``: a re-run after a
        crash picks up where it stopped)."""
        snap = self.gallery.active()
        if snap is not None and snap.version == new:
            return {"skipped": f"the gallery alias already points at {snap.collection}"}
        return self.gallery.reembed(new).model_dump(mode="json")
