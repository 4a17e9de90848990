"""The box's health: heartbeat body, hardware inventory, Prometheus metrics."""
