"""Receipts and loss accounting (issue 14): per-device event streams, holes, losses, and the
receipts the server sends once a batch is committed."""
