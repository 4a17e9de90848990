"""Over-the-air updates of the agent (docs/ota.md, "Install on the agent").

- ``machine``: the update state machine (transition table, loop guard, boot decisions)
- ``store``: state.json, written atomically
- ``slots`` / ``backend`` / ``rauc``: where releases are installed (release dirs + link,
  RAUC whole images, a fake for tests)
- ``fetch`` / ``delta``: TUF-verified, resumable download; bsdiff4 deltas
- ``updater``: update_desired in, update_state out, the install's steps, trial, commit
- ``install``: one install's I/O: fetch, check what was signed, unpack, the model's gate
- ``launch``: starts the agent from the current release and rolls back a failed trial
- ``model_gate``: the accuracy gate a new model must pass
- ``crash``: the kill test hook (``CAMFLEET_OTA_CRASH_AT``)

Kept light: importing the package loads neither python-tuf nor the detector.
"""

from agent.ota.errors import OtaError
from agent.ota.machine import Desired, Record
from agent.ota.settings import OtaSettings

__all__ = ["Desired", "OtaError", "OtaSettings", "Record"]
