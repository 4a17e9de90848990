"""The fleet link: MQTT (paho), the on-disk outbox, the sender, remote commands."""
