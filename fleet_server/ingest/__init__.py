"""MQTT ingest: the MQTT v5 codec and client, the batching writer, the registry, events."""
