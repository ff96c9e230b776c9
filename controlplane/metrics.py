"""The control plane's own Prometheus metrics (process-wide, registered once)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

SOURCE_EVENTS = Counter(
    "nodemesh_source_events",
    "Object events passed on by a source",
    ["source", "kind", "type"],
)
SOURCE_REJECTED = Counter(
    "nodemesh_source_rejected_objects",
    "Objects a source skipped because they were malformed",
    ["source", "kind"],
)
SOURCE_RELISTS = Counter(
    "nodemesh_source_relists",
    "Full listings by the kubernetes source (start, 410 Gone, errors)",
    ["kind", "reason"],
)
SOURCE_WATCH_ERRORS = Counter(
    "nodemesh_source_watch_errors",
    "Watch streams that ended with an error or went silent",
    ["kind"],
)
SOURCE_SYNCED = Gauge(
    "nodemesh_source_synced",
    "1 while the index follows the kind; 0 before its first listing and while its watch has "
    "been down for more than a few seconds (the index then serves the last known state)",
    ["kind"],
)
INDEX_OBJECTS = Gauge("nodemesh_index_objects", "Objects held by the index", ["kind"])
INDEX_BAD_SETTINGS = Counter(
    "nodemesh_index_bad_mesh_settings",
    "Pod or namespace mesh annotations that could not be parsed",
)
INDEX_SKIPPED = Counter(
    "nodemesh_index_skipped_objects",
    "Objects the index could not interpret and left out",
    ["kind"],
)
DESTINATION_SUBSCRIBERS = Gauge(
    "nodemesh_destination_subscribers", "Agents subscribed to the destination stream"
)
DESTINATION_OVERFLOWS = Counter(
    "nodemesh_destination_slow_subscribers_closed",
    "Destination streams closed because the agent fell behind",
)
DESTINATION_UPDATES = Counter(
    "nodemesh_destination_updates_sent", "Snapshot and delta messages sent to agents", ["type"]
)
DESTINATION_MERGED = Counter(
    "nodemesh_destination_deltas_merged",
    "Deltas not sent on their own: merged with the ones queued after them for a stream behind",
)
TAP_SUBSCRIPTIONS = Gauge("nodemesh_tap_subscriptions", "Active tap subscriptions")
TAP_EVENTS = Counter("nodemesh_tap_events", "Tap events from agents", ["outcome"])
