# Node entry point.
#
#   unix port:  micropython firmware/main.py path/to/config.json
#   a board:    runs after boot.py with no arguments and reads config.json from the cwd.

import sys


def _add_own_dir() -> None:
    # The unix port puts the script's directory first on sys.path already; be sure, since
    # node, mqtt, contract... are siblings of this file.
    argv = getattr(sys, "argv", None) or []
    if argv and "/" in argv[0]:
        here = argv[0][: argv[0].rfind("/")] or "/"
        if here not in sys.path:
            sys.path.insert(0, here)


def main() -> int:
    _add_own_dir()
    import gc

    # Collect after every 4 KiB allocated: loading leaves short-lived garbage between the
    # code it keeps; collected early, it does not fragment a small heap.
    gc.threshold(4096)
    import node

    argv = getattr(sys, "argv", None) or []
    return node.main(argv[1] if len(argv) > 1 else "config.json")


if __name__ == "__main__":
    code = main()
    if code:
        sys.exit(code)
