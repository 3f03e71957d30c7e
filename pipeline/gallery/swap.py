"""The offline model swap: this process re-embeds the gallery and flips its alias.

A :class:`pipeline.models.promotion.Swap` for ``facestream models promote|rollback``
when no pipeline is running (a running one swaps through ``pipeline.serve.swap``).
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline.errors import FacestreamError
from pipeline.gallery.service import Gallery
from pipeline.models.promotion import (
    PromotionRecord,
    clear_journal,
    current_user,
    pending_swap,
    record,
    store_lock,
    utc_now,
)

log = logging.getLogger(__name__)


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


def reconcile(gallery: Gallery) -> str | None:
    """Repair a gallery alias and a model store ``ACTIVE`` that disagree; what was done
    (also logged), or None when they agree. Run at start-up, before anything embeds.

    They disagree after a crash between the alias flip (step 3 of a promotion) and the
    write of ``ACTIVE`` (step 4); enrolments would then be embedded by ``ACTIVE``'s model
    and stored in another version's collection. Which one wins:

    - The swap journal names the alias's version as the target: roll forward, since the
      flip is the swap's last step in the gallery (the collection is complete) and the
      promotion had passed its gate; ``ACTIVE`` is written and the history records it.
    - Otherwise (no journal, or one for another version: the alias was moved by hand or
      by an older process) ``ACTIVE``, the record of the promotions, wins and the alias
      goes back to its version's collection. With no such collection nothing is changed
      and the error is logged: rebuilding it is ``facestream models promote --force``.

    A promotion running in another process holds the store's lock: nothing is touched.
    A gallery pinned to a version (``models.version``) is left as configured.
    """
    store = gallery.store
    with store_lock(store, wait=False) as held:
        if not held or gallery.default_version is not None:
            return None
        snap = gallery.active()
        try:
            active = store.active_version()
        except FacestreamError:
            return None  # no ACTIVE yet: the store is not bootstrapped, nothing to compare
        pending = pending_swap(store)
        if snap is None or snap.version == active:
            if pending is not None:
                clear_journal(store)
                if pending.to_version != active:
                    log.warning(
                        "the %s to %s did not finish (the gallery and ACTIVE still serve %s); "
                        "run it again",
                        pending.action,
                        pending.to_version,
                        active,
                    )
            return None
        if pending is not None and pending.to_version == snap.version:
            store.set_active(snap.version)
            record(
                store,
                PromotionRecord(
                    action=pending.action,
                    from_version=active,
                    to_version=snap.version,
                    forced=False,
                    at=utc_now(),
                    user=current_user(),
                    reason=f"completed at start-up: the {pending.action} of {pending.at} "
                    "stopped after the gallery alias moved",
                ),
            )
            clear_journal(store)
            done = (
                f"repaired an interrupted {pending.action}: the gallery alias served "
                f"{snap.version} and ACTIVE {active}; ACTIVE rolled forward to {snap.version}"
            )
            log.warning("%s", done)
            return done
        if gallery.collection_for(active) is None:
            log.error(
                "the gallery alias serves %s but ACTIVE is %s, which has no collection: not "
                "repaired; run `facestream models promote --force %s` to rebuild it",
                snap.version,
                active,
                active,
            )
            return None
        gallery.flip(active)
        clear_journal(store)
        done = (
            f"repaired the gallery alias: it served {snap.version} but ACTIVE is {active} "
            f"(no unfinished swap to {snap.version}); the alias points at {active} again"
        )
        log.warning("%s", done)
        return done
