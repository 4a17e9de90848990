# ruff: noqa: F821
# What goes on the device, in MicroPython's manifest format (module() calls, as a
# MicroPython firmware build reads them to freeze code into flash: FROZEN_MANIFEST=...).
#
# firmware/build.py reads this same file to make the deploy tree: every module below as
# .mpy (mpy-cross), plus boot.py and main.py as source (a board runs those two from its
# filesystem). hal_sim.py (the simulated board) goes in only with the "sim" option: the
# unix-port rig and tests use it, a board never carries it.

metadata(description="camfleet cabinet node: fleet member and cabinet supervisor")
options.defaults(sim=False)

for name in (
    "startup",  # boot.py's and main.py's logic: in the factory tree, never in a bundle
    "version",
    "clock",
    "fsutil",
    "schema",
    "contract",
    "timecheck",
    "mqtt_packet",
    "mqtt",
    "config",
    "ring",
    "commands",
    "sht3x",
    "supervisor",
    "cabinet",
    "hal",
    "hal_machine",
    "link",
    "inbox",
    "node",
    # updates (loaded only while one needs them)
    "trial",
    "ed25519",
    "canonjson",
    "tufcheck",
    "bundle",
    "fetch",
    "install",
    "updater",
):
    module(name + ".py")

if options.sim:
    module("hal_sim.py")
