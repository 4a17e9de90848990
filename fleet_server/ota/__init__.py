"""OTA releases: the TUF repository (tufrepo signs; published reads it without keys),
release artifacts and deltas (release), serving under /ota/ with Range (serve), and the
``camfleet-server release`` CLI (cli).

See docs/ota.md.
"""

from fleet_server.ota.published import RepoError, TargetEntry
from fleet_server.ota.tufrepo import TufRepo

__all__ = ["RepoError", "TargetEntry", "TufRepo"]
