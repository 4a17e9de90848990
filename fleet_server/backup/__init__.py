"""Backup and restore of a fleet server's state (docs/deploy.md, "Backups").

- ``archive``: the archive format (tar.gz, ``MANIFEST.json`` last with every file's sha256),
  written atomically, read back only after every file checks out;
- ``database``: a consistent snapshot of the database while the server runs (SQLite's
  online backup API, ``pg_dump``) and its restore into an empty database;
- ``state``: which files make up the server's state (CA without the offline root key, TUF
  online keys and repository, broker state) and where they go back;
- ``run``: ``backup`` and ``restore`` themselves; ``cli``: the two commands.
"""
