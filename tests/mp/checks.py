# Assertion helpers for the case modules, in the subset both interpreters run.

import os

_made = [0]


def raises(exc_type, fn, *args, **kwargs):
    """Call fn and return the exc_type it raised; AssertionError when it did not."""
    try:
        fn(*args, **kwargs)
    except exc_type as exc:
        return exc
    raise AssertionError(f"{exc_type.__name__} not raised")


def rejects(reason, fn, *args):
    """fn must raise contract.ProtocolError with this reason."""
    from firmware import contract

    exc = raises(contract.ProtocolError, fn, *args)
    assert exc.reason == reason, f"reason {exc.reason}, wanted {reason} ({exc.detail})"
    return exc


def tmp_dir():
    """A fresh directory under $MP_CASES_TMP (set by the harness for both interpreters)."""
    root = os.getenv("MP_CASES_TMP")
    assert root, "MP_CASES_TMP not set"
    _made[0] += 1
    tag = "".join(f"{b:02x}" for b in os.urandom(4))
    path = f"{root}/case-{_made[0]}-{tag}"
    os.mkdir(path)
    return path


def read_text(path):
    with open(path) as f:
        return f.read()


def write_text(path, text):
    with open(path, "w") as f:
        f.write(text)


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False
