"""Device health: rules, alerts and their notifications, deadlines, history and roll-ups."""
