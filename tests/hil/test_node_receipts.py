"""The node's ring keyed to receipts (issue 14), end to end: real MicroPython (.mpy, 128 KiB
heap), a real TLS Mosquitto, the real fleet server. The network is cut (the broker goes
away) while the node makes more events than its ring holds; afterwards what it kept arrives
exactly once, what it had to drop is counted on the node and on the server, and the server
counts no loss. Ring cases under both interpreters (make test): tests/mp/ring_cases.py,
node_cases.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from fleet_server.db import make_engine
from fleet_server.identity.ca import CertificateAuthority, DeviceCredentials
from hil_tests.node import NodeProcess, node_process
from hil_tests.procs import Broker, wait_for
from hil_tests.server import ServerProcess
from tests.node_helpers import no_memory_errors, start, started_nodes, state_json

MakeDevice = Callable[[str], DeviceCredentials]


@pytest.fixture
def started() -> Iterator[list[NodeProcess]]:
    yield from started_nodes()


def _db(url: str, sql: str) -> list[tuple[object, ...]]:
    engine = make_engine(url)
    try:
        with engine.connect() as db:
            return [tuple(r) for r in db.execute(text(sql)).all()]
    finally:
        engine.dispose()


def _toggles(sim: Path, node: NodeProcess, n: int, first: int) -> int:
    for i in range(first, first + n):
        kind = "door.open" if i % 2 == 0 else "door.closed"
        before = node.log_text().count(kind)
        (sim / "pin_door").write_text("1" if i % 2 == 0 else "0")
        wait_for(lambda k=kind, b=before: node.log_text().count(k) > b, 5, what=kind)  # type: ignore[misc]
    return first + n


@pytest.mark.hil_long  # make test: the ring's receipt logic under MicroPython (node_cases)
@pytest.mark.timeout(300)
def test_node_behind_a_cut_network_keeps_what_fits_and_counts_what_it_dropped(
    ca: CertificateAuthority, device_factory: MakeDevice, tmp_path: Path,
    started: list[NodeProcess],
) -> None:  # fmt: skip
    dev = "node-rx-01"
    sim = tmp_path / "sim"
    sim.mkdir()
    (sim / "pin_door").write_text("0")
    broker = Broker(ca, tmp_path / "broker").start()
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    server = ServerProcess(tmp_path / "server", ca.dir, broker.port, database_url=url,
                           client_id="fleet-node-rx")  # fmt: skip
    try:
        server.start_and_wait(60)
        node = start(started, node_process(
            device_factory(dev), broker.port, tmp_path / "n", heartbeat_s=1, sim_dir=sim,
            extra={"sensor_s": 0.25, "ring_slots": 4, "receipt_timeout_s": 2}, heap="192k",
        ))  # fmt: skip
        stored = lambda: _db(url, f"SELECT count(*) FROM events WHERE device_id = '{dev}'")[0][0]  # noqa: E731
        wait_for(lambda: stored() == 1, 30, what="node.boot stored")
        made = _toggles(sim, node, 3, 0)
        wait_for(lambda: stored() == 4, 20, what="events stored while connected")
        wait_for(lambda: state_json(tmp_path / "n", "events.json")["acked"] == 4, 20,
                 what="all receipted")  # fmt: skip

        broker.stop()  # the network is cut: ten events, the ring holds four
        wait_for(lambda: "NetworkError" in node.log_text() or "OSError" in node.log_text(), 15,
                 what="the node sees the cut")  # fmt: skip
        made = _toggles(sim, node, 10, made)
        down = state_json(tmp_path / "n", "events.json")
        assert down["dropped"] == 6
        broker = Broker(ca, tmp_path / "broker", port=broker.port).start()
        # the drop report plus the four kept
        wait_for(lambda: stored() == 4 + 1 + 4, 40, what="the kept events and the report")
        wait_for(lambda: state_json(tmp_path / "n", "events.json")["acked"] == 14, 30,
                 what="the ring emptied by receipts")  # fmt: skip
        rows = _db(url, f"SELECT seq, type FROM events WHERE device_id = '{dev}' ORDER BY seq")
        seqs = [int(str(r[0])) for r in rows]
        assert len(seqs) == len(set(seqs)) == 9  # exactly once each
        assert seqs == [0, 1, 2, 3, 9, 10, 11, 12, 13]  # 4..9 dropped; the report is 9
        assert [r[1] for r in rows if int(str(r[0])) == 9] == ["buffer.dropped"]

        def streams() -> tuple[object, ...]:
            return _db(url, "SELECT lost, dropped, open_count, top FROM event_streams "
                            f"WHERE device_id = '{dev}'")[0]  # fmt: skip

        wait_for(lambda: streams()[1] == 6, 20, what="the drops counted on the server")
        assert streams() == (0, 6, 0, 13)  # no loss, six dropped at the source, no hole
        no_memory_errors(node)
    finally:
        server.stop()
        broker.stop()
