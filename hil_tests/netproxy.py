"""A TCP proxy between a device and the broker that can break the network on purpose.

The virtual rig puts one in front of every device: the device's config names the proxy's
port, the proxy forwards to the broker. Faults act on the byte stream as a bad link would
show it to the device's TCP socket:

- ``cut``: every open connection is reset and new ones are closed at once (a cable pulled,
  a partition); ``restore`` lets connections through again.
- ``delay``: every chunk waits ``seconds`` before it is passed on (order kept).
- ``loss``: TCP retransmits what an IP link loses, so the socket sees lost packets as
  stalls: each chunk is held back, with probability ``fraction``, for a retransmission
  timeout (``retransmit_s``, doubled for every loss in a row, like TCP's backoff).
- ``corrupt``: with probability ``fraction`` a chunk has one byte flipped: what a link
  corruption that slipped past TCP's checksum looks like; TLS refuses it and the
  connection ends.

Only 127.0.0.1. Counts of what it did are kept for the report.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from dataclasses import dataclass, field

CHUNK = 16384
RETRANSMIT_S = 0.2  # first retransmission timeout of the loss model
RETRANSMIT_MAX_S = 3.2


@dataclass
class ProxyStats:
    connections: int = 0
    refused: int = 0  # connections closed at once while cut
    resets: int = 0  # open connections ended by a cut
    bytes_up: int = 0  # device -> broker
    bytes_down: int = 0
    held: int = 0  # chunks held back by the loss model
    corrupted: int = 0
    faults: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Faults:
    cut: bool = False
    delay_s: float = 0.0
    loss: float = 0.0
    corrupt: float = 0.0


class NetProxy:
    """``127.0.0.1:<port>`` forwarded to ``127.0.0.1:<target_port>``, with faults."""

    def __init__(self, target_port: int, *, seed: int = 1, name: str = "proxy") -> None:
        self.name = name
        self.target_port = target_port
        self.stats = ProxyStats()
        self.faults = Faults()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name=f"{name}-accept", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ faults

    def cut(self) -> None:
        self._set(Faults(cut=True, delay_s=self.faults.delay_s))
        self._reset_all()

    def delay(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("delay must not be negative")
        self._set(Faults(self.faults.cut, seconds, self.faults.loss, self.faults.corrupt))

    def loss(self, fraction: float) -> None:
        self._set(Faults(self.faults.cut, self.faults.delay_s, _fraction(fraction), 0.0))

    def corrupt(self, fraction: float) -> None:
        f = self.faults
        self._set(Faults(f.cut, f.delay_s, f.loss, _fraction(fraction)))

    def restore(self) -> None:
        self._set(Faults())

    def _set(self, faults: Faults) -> None:
        with self._lock:
            self.faults = faults
            self.stats.faults.append(repr(faults))

    def _reset_all(self) -> None:
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
        for sock in conns:
            self.stats.resets += 1
            with contextlib.suppress(OSError):  # RST, not FIN: a link that went away
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            with contextlib.suppress(OSError):
                sock.close()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._reset_all()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------ forwarding

    def _accept(self) -> None:
        self._listener.settimeout(0.25)  # close() does not wake a blocked accept()
        while not self._stop.is_set():
            try:
                client, _addr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            if self.faults.cut:
                self.stats.refused += 1
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()  # broker down: the device sees a refused connection
                continue
            upstream.settimeout(None)
            self.stats.connections += 1
            with self._lock:
                self._conns.update((client, upstream))
            for src, dst, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(
                    target=self._pump, args=(src, dst, up), name=f"{self.name}-pump", daemon=True
                ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        lost_in_row = 0
        try:
            while True:
                data = src.recv(CHUNK)
                if not data:
                    break
                f = self.faults
                if f.cut:
                    break
                if f.delay_s:
                    time.sleep(f.delay_s)
                if f.loss and self._rng.random() < f.loss:
                    self.stats.held += 1
                    time.sleep(min(RETRANSMIT_MAX_S, RETRANSMIT_S * 2**lost_in_row))
                    lost_in_row += 1
                else:
                    lost_in_row = 0
                if f.corrupt and self._rng.random() < f.corrupt:
                    self.stats.corrupted += 1
                    data = _flip(data, self._rng.randrange(len(data)))
                dst.sendall(data)
                if up:
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)


def _fraction(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"a fraction is between 0 and 1, not {value}")
    return value


def _flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0xFF
    return bytes(out)
