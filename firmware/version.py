# The node firmware's version, reported in every heartbeat (versions.firmware).
# A release bumps it; the OTA tooling reads it from here.

VERSION = "0.2.0"
