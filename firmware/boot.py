# Runs first on a board, before main.py. Kept minimal: a later release selects the A/B
# application slot here. Nothing that can fail belongs in boot.py (a failure here leaves
# the board at the REPL with no watchdog armed).

import gc

gc.collect()
