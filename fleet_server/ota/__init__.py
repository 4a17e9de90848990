"""OTA releases: the TUF repository (tufrepo), release artifacts and deltas (release),
serving under /ota/ with Range (serve), and the ``camfleet-server release`` CLI (cli).

See docs/ota.md.
"""

from fleet_server.ota.tufrepo import RepoError, TargetEntry, TufRepo

__all__ = ["RepoError", "TargetEntry", "TufRepo"]
