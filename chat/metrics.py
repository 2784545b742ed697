"""Prometheus metrics for one replica.

Each application gets its own registry (tests run several apps in one
process), and every series carries the replica's ``server`` id and backplane
``mode`` so a dashboard can tell replicas and modes apart.
"""

from __future__ import annotations

import asyncio

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

CONTENT_TYPE = CONTENT_TYPE_LATEST
# The *_created series double the output and no dashboard here uses them.
disable_created_metrics()


class Metrics:
    def __init__(self, server_id: str, mode: str):
        self.registry = CollectorRegistry()
        labels = ("server", "mode")
        values = (server_id, mode)

        def counter(name, doc):
            return Counter(name, doc, labels, registry=self.registry).labels(*values)

        self.connected = Gauge(
            "chat_connected_clients", "Clients connected to this replica",
            labels, registry=self.registry,
        ).labels(*values)
        self.channels = Gauge(
            "chat_backplane_channels",
            "Redis channels this replica is subscribed to (pubsub mode: the control "
            "channel and one per room with members here)",
            labels, registry=self.registry,
        ).labels(*values)
        self.accepted = counter(
            "chat_messages_accepted", "Chat messages accepted from this replica's clients")
        self.delivered = counter(
            "chat_messages_delivered", "Chat messages written to this replica's clients")
        self.written_directly = counter(
            "chat_messages_written_directly",
            "Chat messages written to a WebSocket without Engine.IO's send queue "
            "(the rest of chat_messages_delivered went through it)")
        self.rejected = counter(
            "chat_messages_rejected", "Chat messages refused (invalid or rate limited)")
        self.published = counter(
            "chat_backplane_publishes", "Messages published to the Redis backplane")
        self.received = counter(
            "chat_backplane_received", "Messages received from the Redis backplane")
        self.publish_failures = counter(
            "chat_backplane_publish_failures", "Publishes to Redis that failed")
        self.reconnects = counter(
            "chat_backplane_reconnects", "Times the backplane subscription was re-established")
        self.recovered = counter(
            "chat_messages_recovered",
            "Chat messages this replica read back from a room's history because "
            "the live path did not bring them (gap filled)")
        self.sessions_recovered = counter(
            "chat_sessions_recovered",
            "Stock clients that came back to their session (connection state recovery)")
        self.sessions_not_recovered = counter(
            "chat_sessions_not_recovered",
            "Connections that presented a session id and got a fresh session instead")
        self.duplicates = counter(
            "chat_messages_duplicates", "Chat messages dropped because already delivered")
        self.history_failures = counter(
            "chat_history_failures", "Reads or writes of the message history that failed")
        self.handling = Histogram(
            "chat_message_handling_seconds",
            "Time from receiving a chat message to acknowledging it",
            labels, registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
        ).labels(*values)

        # Leak watch: process_resident_memory_bytes & co., and live tasks.
        ProcessCollector(registry=self.registry)
        Gauge("chat_asyncio_tasks", "asyncio tasks alive in this replica",
              registry=self.registry).set_function(_task_count)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _task_count() -> int:
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # no running loop
        return 0
