"""The field technician's tool (camfleet-provision). Public surface: ``cli.main``."""
