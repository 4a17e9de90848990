"""Prometheus metrics of the fleet server (one registry per server instance)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from firmware import contract
from fleet_server.ingest.gate import GATE_REASONS


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.received = Counter(
            "camfleet_ingest_received_total",
            "MQTT messages received by ingest, by kind",
            ["kind"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "camfleet_ingest_rejected_total",
            "Messages refused by the contract, by reason",
            ["reason"],
            registry=self.registry,
        )
        for reason in contract.REASONS + GATE_REASONS:
            self.rejected.labels(reason=reason)
        self.dead_letters = Counter(
            "camfleet_ingest_dead_letters_total",
            "Messages that passed the contract but failed to store, set aside (GET "
            "/api/dead-letters)",
            registry=self.registry,
        )
        self.thread_restarts = Counter(
            "camfleet_ingest_thread_restarts_total",
            "Ingest threads that died and were started again, by thread",
            ["thread"],
            registry=self.registry,
        )
        self.refusal_log_lines = Counter(
            "camfleet_ingest_refusal_log_lines_total",
            "Log lines written about refusals (one summary per device and reason per interval)",
            registry=self.registry,
        )
        self.stored = Counter(
            "camfleet_ingest_stored_total",
            "Messages written to the registry, by kind",
            ["kind"],
            registry=self.registry,
        )
        self.duplicates = Counter(
            "camfleet_ingest_duplicates_total",
            "Redelivered messages recognised and skipped",
            registry=self.registry,
        )
        self.store_errors = Counter(
            "camfleet_ingest_store_errors_total",
            "Batches the database refused (retried)",
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "camfleet_ingest_batch_seconds",
            "Time to store one batch",
            registry=self.registry,
        )
        self.lag = Histogram(
            "camfleet_ingest_lag_seconds",
            "From a heartbeat's device timestamp to its commit in the database",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "camfleet_ingest_queue_depth",
            "Messages waiting for the DB writer",
            registry=self.registry,
        )
        self.devices = Gauge(
            "camfleet_devices", "Devices by state", ["state"], registry=self.registry
        )
        self.offline_deadline = Counter(
            "camfleet_offline_deadline_total",
            "Devices marked offline because their heartbeat deadline passed",
            registry=self.registry,
        )
        self.alert_changes = Counter(
            "camfleet_alert_changes_total",
            "Alert changes, by new state",
            ["state"],
            registry=self.registry,
        )
        self.webhook = Counter(
            "camfleet_webhook_total",
            "Alert webhook deliveries, by result (delivered, failed, dropped)",
            ["result"],
            registry=self.registry,
        )
        self.mqtt_connected = Gauge(
            "camfleet_mqtt_connected",
            "1 while ingest is connected to the broker",
            registry=self.registry,
        )
        # receipts and loss accounting (issue 14); the gauges come from the database
        self.receipts_sent = Counter(
            "camfleet_receipts_sent_total",
            "Receipt messages sent to devices after committed batches",
            registry=self.registry,
        )
        self.receipts_unsent = Counter(
            "camfleet_receipts_unsent_total",
            "Receipts not handed to the broker (the device sends the events again)",
            registry=self.registry,
        )
        self.events_lost = Gauge(
            "camfleet_events_lost",
            "Event sequence numbers counted lost (holes open longer than lost_after_s), "
            "all devices",
            registry=self.registry,
        )
        self.events_missing = Gauge(
            "camfleet_events_missing",
            "Event sequence numbers in open holes, not yet counted lost",
            registry=self.registry,
        )
        self.events_late = Gauge(
            "camfleet_events_late",
            "Events counted lost that arrived after all (taken off camfleet_events_lost)",
            registry=self.registry,
        )
        self.events_refused_at_source = Gauge(
            "camfleet_events_refused_at_source",
            "Events devices report they refused (disk full) or dropped (outbox budget), "
            "from their latest heartbeats",
            ["why"],
            registry=self.registry,
        )
        self.events_unreceipted = Gauge(
            "camfleet_events_unreceipted",
            "Events devices sent and hold without a receipt, from their latest heartbeats",
            registry=self.registry,
        )
