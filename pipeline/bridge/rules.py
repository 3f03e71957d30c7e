"""Which sinks an event goes to: the configured rules, checked against the gallery and
the camera fleet at start-up, and a cooldown per rule, identity (or unknown track) and
camera.

The cooldown counts in capture time, not the bridge's clock: a backlog read after an
outage is thinned the way it would have been live, and a replay decides the same.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

from pipeline import metrics
from pipeline.config.bridge import RuleConfig, parse_hours
from pipeline.errors import FacestreamError
from pipeline.gallery.records import Identity
from pipeline.stream.schemas import BridgeEvent

MAX_COOLDOWNS = 100_000  # (rule, who, camera) keys remembered, oldest forgotten first


class RuleError(FacestreamError):
    """A rule names a camera or an identity that does not exist (start-up)."""

    code = "bridge_rule"


@dataclass(frozen=True)
class Rule:
    cfg: RuleConfig
    identity_ids: frozenset[str] | None
    window: tuple[time, time] | None
    zone: ZoneInfo

    @property
    def name(self) -> str:
        return self.cfg.name

    def matches(self, ev: BridgeEvent) -> bool:
        c = self.cfg
        if ev.decision not in c.decisions:
            return False
        if c.cameras is not None and ev.camera_id not in c.cameras:
            return False
        if ev.decision == "identified":
            assert ev.identity is not None
            if self.identity_ids is not None and ev.identity.identity_id not in self.identity_ids:
                return False
            if c.min_similarity is not None and (ev.similarity or -1.0) < c.min_similarity:
                return False
        return self.window is None or in_window(ev.capture_ts_ms, self.window, self.zone)


def in_window(ts_ms: int, window: tuple[time, time], zone: ZoneInfo) -> bool:
    t = datetime.fromtimestamp(ts_ms / 1000, UTC).astimezone(zone).time()
    start, end = window
    if start < end:
        return start <= t < end
    return t >= start or t < end  # wraps midnight


IdentityLookup = Callable[[str], list[Identity]]


def compile_rules(
    rules: Iterable[RuleConfig], cameras: set[str], lookup: IdentityLookup
) -> list[Rule]:
    """The rules, their identities resolved to ids; :class:`RuleError` naming each camera
    or identity that is not known."""
    out, problems = [], []
    for cfg in rules:
        for cam in cfg.cameras or []:
            if cam not in cameras:
                known = ", ".join(sorted(cameras)) or "none (stream.cameras, bridge.cameras)"
                problems.append(f"rule {cfg.name!r}: unknown camera {cam!r} (known: {known})")
        ids: set[str] | None = None
        if cfg.identities is not None:
            ids = set()
            for who in cfg.identities:
                found = lookup(who)
                if not found:
                    problems.append(f"rule {cfg.name!r}: no enrolled identity {who!r}")
                elif len(found) > 1:
                    problems.append(
                        f"rule {cfg.name!r}: {who!r} names {len(found)} identities; "
                        "use an identity id or external id"
                    )
                else:
                    ids.add(found[0].identity_id)
        window = parse_hours(cfg.hours) if cfg.hours else None
        frozen = frozenset(ids) if ids is not None else None
        out.append(Rule(cfg, frozen, window, ZoneInfo(cfg.timezone)))
    if problems:
        raise RuleError("; ".join(problems))
    return out


class Router:
    """An event's sinks, each with the names of the rules that send it there."""

    def __init__(self, rules: list[Rule], max_keys: int = MAX_COOLDOWNS) -> None:
        self.rules = rules
        self.max_keys = max_keys
        self._last_sent: OrderedDict[tuple[str, str, str], int] = OrderedDict()
        self.suppressed: dict[str, int] = {r.name: 0 for r in rules}

    @staticmethod
    def _who(ev: BridgeEvent) -> str:
        if ev.identity is not None:
            return f"identity:{ev.identity.identity_id}"
        return f"track:{ev.track_id}"

    def _cooled(self, rule: Rule, ev: BridgeEvent) -> bool:
        """Whether ``rule`` may send ``ev`` now; remembers the send when it may."""
        key = (rule.name, self._who(ev), ev.camera_id)
        last = self._last_sent.get(key)
        # Either side of the last alert: cameras' clocks and a camera's two topics may
        # deliver a little out of order.
        if last is not None and abs(ev.capture_ts_ms - last) < rule.cfg.cooldown_s * 1000:
            self.suppressed[rule.name] += 1
            metrics.BRIDGE_SUPPRESSED.labels(rule=rule.name).inc()
            return False
        self._last_sent.pop(key, None)
        self._last_sent[key] = max(ev.capture_ts_ms, last or ev.capture_ts_ms)
        while len(self._last_sent) > self.max_keys:
            self._last_sent.popitem(last=False)
        return True

    def route(self, ev: BridgeEvent) -> dict[str, list[str]]:
        sinks: dict[str, list[str]] = {}
        for rule in self.rules:
            if rule.matches(ev) and self._cooled(rule, ev):
                for sink in rule.cfg.sinks:
                    sinks.setdefault(sink, []).append(rule.name)
        return sinks
