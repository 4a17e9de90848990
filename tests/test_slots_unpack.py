"""Bundle unpacking on a Python without tarfile's extraction filters (Debian 12's 3.11.2, a
real box's: found booting the package in the VM rig): the same rules, checked per member."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from agent.ota.errors import OtaError
from agent.ota.slots import _unpack


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def _info(
    name: str, kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, mode
    return info


@pytest.mark.parametrize("stdlib", [False, True] if hasattr(tarfile, "data_filter") else [False])
def test_a_good_bundle_unpacks_the_same_both_ways(tmp_path: Path, stdlib: bool) -> None:
    bundle = _tar(tmp_path / "b.tar.gz", [
        (_info("pkg", tarfile.DIRTYPE, mode=0o755), b""),
        (_info("pkg/run.py", mode=0o4777), b"print(1)\n"),
        (_info("pkg/link.py", tarfile.SYMTYPE, "run.py"), b""),
    ])  # fmt: skip
    _unpack(bundle, tmp_path / "out", stdlib_filter=stdlib)
    out = tmp_path / "out" / "pkg"
    assert (out / "run.py").read_text() == "print(1)\n"
    assert (out / "link.py").read_text() == "print(1)\n"
    assert (out / "run.py").stat().st_mode & 0o7777 == 0o755  # no set-id, no others' write


@pytest.mark.parametrize(("info", "why"), [
    (_info("/etc/passwd"), "outside"),
    (_info("pkg/../../escape"), "outside"),
    (_info("pkg/l", tarfile.SYMTYPE, "../../etc/passwd"), "outside"),
    (_info("pkg/l", tarfile.SYMTYPE, "/etc/passwd"), "outside"),
    (_info("pkg/h", tarfile.LNKTYPE, "../etc/passwd"), "outside"),
    (_info("pkg/dev", tarfile.CHRTYPE), "special"),
    (_info("pkg/fifo", tarfile.FIFOTYPE), "special"),
])  # fmt: skip
def test_a_hostile_member_refuses_the_whole_bundle(
    tmp_path: Path, info: tarfile.TarInfo, why: str
) -> None:
    bundle = _tar(tmp_path / "b.tar.gz", [(_info("pkg/ok.py"), b"x"), (info, b"x")])
    with pytest.raises(OtaError, match=why):
        _unpack(bundle, tmp_path / "out", stdlib_filter=False)
    assert not (tmp_path / "out" / "pkg" / "ok.py").exists()  # checked before anything is written
