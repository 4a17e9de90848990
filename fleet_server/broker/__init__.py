"""The broker's side of the fleet: Mosquitto's config and ACL, rendered from state."""
