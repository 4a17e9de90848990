"""Privacy by policy (issue 20): per-site snapshot policy, per-camera masks, the ingest gate
that refuses images a site's policy forbids, retention, data-subject export and erasure.

Anatomy as in ``fleet_server/rollouts``: ``settings``, ``model`` + ``store`` (tables and
queries), ``policy`` (pure decisions), ``gate`` (what ingest calls), ``retention`` and
``subject`` (deletions and exports), ``api`` + ``pages`` (people's side), ``runner`` (loop),
``cli``.
"""
