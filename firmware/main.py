# Node entry point.
#
#   unix port:  micropython firmware/main.py path/to/config.json
#   a board:    runs after boot.py with no arguments and reads config.json from the cwd.
#
# Fixed start-up code (never updated), kept short: compiled source stays in RAM. boot.py
# has put the chosen application slot first on sys.path (on the unix port main.py has
# startup.py choose); ``node`` and the rest come from there. An install boot runs instead
# of the node when an update is pending; an install boot or an application on trial that
# raises is reset, so the attempt is counted and rolled back when they run out.

import sys


def main() -> int:
    import gc

    # Collect after every 4 KiB allocated: loading leaves short-lived garbage between the
    # code it keeps; collected early, it does not fragment a small heap.
    gc.threshold(4096)
    argv = getattr(sys, "argv", None) or []
    root = ""
    if argv and "/" in argv[0]:  # the unix port: node, mqtt... are siblings of this file
        root = argv[0][: argv[0].rfind("/")] or "/"
        if root not in sys.path:
            sys.path.insert(0, root)
    config_path = argv[1] if len(argv) > 1 else "config.json"
    import startup

    if sys.platform in ("linux", "darwin"):  # a board ran boot.py before this file
        startup.start(root)
    installing = startup.install_pending(config_path)
    del sys.modules["startup"], startup
    gc.collect()
    try:
        if installing:
            import install

            return install.main(config_path, root)
        import node

        return node.main(config_path, root)
    except Exception as exc:
        import startup

        if not installing and not startup.on_trial(root):
            raise
        print("E main: install boot or application on trial failed:", repr(exc))
        startup.reset(config_path)
        raise


if __name__ == "__main__":
    code = main()
    if code:
        sys.exit(code)
