"""The rig the scenarios run on, and the recorder behind the report.

Scenarios take ``rig``: the virtual rig (real processes here) always, and a real rig too
when ``CAMFLEET_RIG`` names a rig file (docs/hil.md). The recorder's timeline and the HTML
report go to ``CAMFLEET_HIL_OUT`` (``make hil``: build/hil/) or else to a temporary folder.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from fleet_server.identity.ca import CertificateAuthority
from hil_tests.real_rig import RealRig
from hil_tests.report import write_report
from hil_tests.rig import Recorder, Rig, Unsupported
from hil_tests.virtual_rig import VirtualRig

RIGS = ["virtual"] + (["real"] if os.environ.get("CAMFLEET_RIG") else [])


@pytest.fixture(scope="session")
def hil_recorder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorder]:
    recorder = Recorder()
    yield recorder
    out = Path(os.environ.get("CAMFLEET_HIL_OUT") or tmp_path_factory.mktemp("hil-report"))
    recorder.save(out / "timeline.json")
    write_report(out / "timeline.json", out / "report.html")


@pytest.fixture(scope="module", params=RIGS)  # torn down after the scenarios
def rig(
    request: pytest.FixtureRequest,
    ca: CertificateAuthority,
    hil_recorder: Recorder,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Rig]:
    made: Rig
    if request.param == "virtual":
        made = VirtualRig(tmp_path_factory.mktemp("rig"), ca, hil_recorder).start()
    else:
        made = RealRig.from_file(Path(os.environ["CAMFLEET_RIG"]), hil_recorder)
    try:
        yield made
    finally:
        made.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        item.stash[_OUTCOME] = "skipped" if report.skipped else report.outcome
    return report


_OUTCOME = pytest.StashKey[str]()


@pytest.fixture
def scenario(request: pytest.FixtureRequest, rig: Rig) -> Iterator[Rig]:
    """The rig, with the scenario's start and end on the recorder (invariant: the test's
    docstring's first paragraph). A rig that cannot do something the scenario needs
    raises ``Unsupported``: the scenario is skipped with the reason (pytest_pyfunc_call)."""
    doc = (request.function.__doc__ or "").strip().split("\n\n")[0]
    rig.recorder.start(request.node.name, rig.kind, " ".join(doc.split()))
    yield rig
    rig.recorder.end(request.node.stash.get(_OUTCOME, "failed"))


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, object, object]:
    try:
        return (yield)
    except Unsupported as exc:
        pytest.skip(f"this rig cannot: {exc}")
