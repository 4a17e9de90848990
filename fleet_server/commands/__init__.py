"""Remote commands and desired config: records, request/response bookkeeping, API."""
