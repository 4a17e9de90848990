# Runs first on a board, before main.py: picks the application slot (A/B updates; the
# logic is startup.py, shipped as .mpy with the factory application and never updated).
# Kept to these lines: a board compiles this file at every boot, and nothing here may
# stop the boot (a failure leaves the board at the REPL with no watchdog armed).

import gc

try:
    import startup

    startup.start("")
    del startup
except Exception as exc:  # the factory application then runs
    print("E boot:", exc)
gc.collect()
