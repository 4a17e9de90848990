# Atomic file writes, shared by the firmware and the CPython packages.
#
# Write to a temp file beside the target, flush, fsync where the port has it, then rename
# over the target: a power cut leaves either the old file or the new one, never half of
# one. On CPython the temp file is created with the final mode, so a key is never readable
# by others even for a moment.

import os

# MicroPython ports without fsync get None
_fsync = getattr(os, "fsync", None)


def atomic_write(path: str, data: bytes, mode: int = 0o644) -> None:
    tmp = path + ".tmp"
    if hasattr(os, "O_CREAT"):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        f = os.fdopen(fd, "wb")
    else:
        f = open(tmp, "wb")  # noqa: SIM115 - closed below, MicroPython has no os.open
    try:
        f.write(data)
        f.flush()
        if _fsync is not None:
            _fsync(f.fileno())
    finally:
        f.close()
    if hasattr(os, "chmod"):
        os.chmod(tmp, mode)
    if hasattr(os, "replace"):
        os.replace(tmp, path)
    else:
        os.rename(tmp, path)
    slash = path.rfind("/")
    sync_dir(path[:slash] if slash > 0 else ".")


# fsync a directory, so a rename or a new entry in it survives a power cut (where the port
# can; MicroPython's filesystems commit on close).
def sync_dir(directory: str) -> None:
    if _fsync is None or not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _fsync(fd)
    finally:
        os.close(fd)
