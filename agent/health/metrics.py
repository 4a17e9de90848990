"""The agent's Prometheus metrics (one registry per agent), served on 127.0.0.1 when
``metrics_port`` is set."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class AgentMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.frames = Counter("camfleet_agent_frames_total", "Frames processed", registry=r)
        self.frames_dropped = Counter(
            "camfleet_agent_frames_dropped_total",
            "Frames dropped because the pipeline was behind",
            registry=r,
        )
        self.frames_bad = Counter(
            "camfleet_agent_frames_bad_total",
            "Frames that could not be decoded or used (empty, truncated, wrong format)",
            registry=r,
        )
        self.invocations = Counter(
            "camfleet_agent_detector_invocations_total", "Detector runs", registry=r
        )
        self.inference = Histogram(
            "camfleet_agent_inference_seconds",
            "Time of one detector invocation",
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
            registry=r,
        )
        self.events = Counter(
            "camfleet_agent_events_total", "Events put into the outbox", ["type"], registry=r
        )
        self.events_refused = Counter(
            "camfleet_agent_events_refused_total",
            "Events that did not fit the contract (not stored)",
            registry=r,
        )
        self.outbox_depth = Gauge(
            "camfleet_agent_outbox_depth", "Messages waiting in the outbox", registry=r
        )
        self.outbox_bytes = Gauge(
            "camfleet_agent_outbox_bytes", "Payload bytes waiting in the outbox", registry=r
        )
        self.outbox_dropped = Gauge(
            "camfleet_agent_outbox_dropped",
            "Messages dropped by the outbox budget since it was made, by class",
            ["cls"],
            registry=r,
        )
        self.acked = Counter(
            "camfleet_agent_outbox_acked_total", "Outbox messages acknowledged", registry=r
        )
        self.scene_problem = Gauge(
            "camfleet_agent_scene_problem",
            "1 while a scene condition is reported",
            ["condition"],
            registry=r,
        )
        self.mqtt_connected = Gauge(
            "camfleet_agent_mqtt_connected", "1 while connected to the broker", registry=r
        )

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        start_http_server(port, addr=addr, registry=self.registry)
