"""A webhook sink: each event POSTed as JSON, signed (``signing``), once per try.

Answers: 2xx is an acknowledgement; 400, 410, 413, 415 and 422 say the body itself is
refused (a retry would send the same body), so the event is dead-lettered at once;
anything else (408, 429, 5xx, no answer) is tried again after a pause.
"""

from __future__ import annotations

import time

import httpx

from pipeline.bridge.signing import signed_headers
from pipeline.bridge.sink import Delivery, Refused
from pipeline.config.bridge import WebhookConfig
from pipeline.stream.schemas import to_json

REFUSED_STATUS = frozenset({400, 410, 413, 415, 422})


class WebhookSink:
    def __init__(self, cfg: WebhookConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.retry = cfg.retry
        self._key = cfg.signing_key()
        # One connection pool per hook; redirects are not followed (a signed POST must
        # reach the configured receiver, not wherever it points).
        self._client = httpx.Client(timeout=cfg.timeout_s, verify=cfg.verify_tls)

    def deliver(self, d: Delivery) -> None:
        if d.event is None:
            return  # camera states are for MQTT (Home Assistant) only
        body = to_json(d.event)
        headers = signed_headers(self._key, d.event.event_id, int(time.time()), body)
        resp = self._client.post(str(self.cfg.url), content=body, headers=headers)
        if 200 <= resp.status_code < 300:
            return
        detail = f"HTTP {resp.status_code} from {self.cfg.url}: {resp.text[:200]!r}"
        if resp.status_code in REFUSED_STATUS:
            raise Refused(detail)
        raise ConnectionError(detail)

    def idle(self) -> None:
        pass

    def close(self) -> None:
        self._client.close()
