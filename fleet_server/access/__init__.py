"""People and what they may do: roles, API tokens, the audit log."""
