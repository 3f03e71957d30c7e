"""The event bridge: identification and unknown-person events from Kafka to the places
people act on them (MQTT with Home Assistant discovery, signed webhooks), by rules.

See ``README.md`` beside this file. The parts, one job each:

- ``derive``: Kafka records -> :class:`~pipeline.stream.schemas.BridgeEvent` (identity
  events as they are; unknown people from the detections, per track) and the cameras'
  "unknown person present" state;
- ``rules``: which sinks an event goes to, with a cooldown per identity (or unknown
  track) and camera;
- ``ledger``: which Kafka offsets may be committed (every sink acknowledged);
- ``sink``: one thread per sink, retries with backoff, dead letters;
- ``mqtt``, ``homeassistant``, ``webhook``, ``signing``: the sinks and their formats;
- ``service``: :class:`Bridge`, the consumer that wires them.
"""
