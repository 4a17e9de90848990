# Run case modules under MicroPython: micropython run.py <repo root> <module>...
#
# Every function whose name starts with "test_" is called with no arguments. One line per
# case ("PASS tests.mp.x.test_y" or "FAIL ...: error"), then "N passed, M failed"; the exit
# status is 1 when any case failed. The pytest side checks the names and the count.

import gc
import sys


def run(modules):
    passed = 0
    failed = 0
    for name in modules:
        module = __import__(name, None, None, ["_"])
        for attr in sorted(dir(module)):
            if not attr.startswith("test_"):
                continue
            case = getattr(module, attr)
            try:
                case()
            except Exception as exc:
                failed += 1
                print(f"FAIL {name}.{attr}: {exc!r}")
                sys.print_exception(exc)
            else:
                passed += 1
                print(f"PASS {name}.{attr}")
            gc.collect()
    print(f"{passed} passed, {failed} failed")
    return failed


if __name__ == "__main__":
    sys.path.insert(0, sys.argv[1])
    sys.exit(1 if run(sys.argv[2:]) else 0)
