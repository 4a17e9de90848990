# A fake broker byte stream for the case modules (both interpreters).

from firmware import mqtt_packet


def sent_packets(data):
    """Split bytes a client wrote into parsed packets (PUBLISH, ...) and DISCONNECTs."""
    out = []
    buf = bytearray(data)
    while buf:
        found = mqtt_packet.split_packet(buf, 1 << 20)
        if found is None:
            raise AssertionError(f"partial packet in {bytes(buf)!r}")
        first, body, length = found
        buf[:length] = b""
        if first == mqtt_packet.DISCONNECT:
            out.append((mqtt_packet.DISCONNECT,))
        else:
            out.append(mqtt_packet.parse_packet(first, body))
    return out


class FakeSocket:
    """A non-blocking byte stream: read() gives queued bytes (None when there are none,
    b"" after the peer closed), write() records; ``reply`` maps a written packet's first
    byte to the bytes the fake broker answers with; ``auto_puback`` acknowledges every
    QoS 1 PUBLISH written in one piece."""

    def __init__(self, incoming=b"", chunk=4096, write_chunk=4096):
        self.incoming = bytearray(incoming)
        self.sent = bytearray()
        self.chunk = chunk
        self.write_chunk = write_chunk
        self.reply = {}
        self.auto_puback = False
        self.eof = False
        self.closed = False

    def feed(self, data):
        self.incoming.extend(data)

    def read(self, n):
        if not self.incoming:
            return b"" if self.eof else None
        n = min(n, self.chunk)
        out = bytes(self.incoming[:n])
        self.incoming[:n] = b""
        return out

    def readinto(self, buf):
        data = self.read(len(buf))
        if data is None:
            return None
        buf[: len(data)] = data
        return len(data)

    def write(self, data):
        data = bytes(data[: self.write_chunk])
        self.sent.extend(data)
        answer = self.reply.get(data[0]) if data else None
        if answer:
            self.incoming.extend(answer)
        elif self.auto_puback and data and data[0] & 0xF6 == 0x32:  # QoS 1 PUBLISH
            found = mqtt_packet.split_packet(data, 1 << 20)
            if found is not None:
                pid = mqtt_packet.parse_packet(found[0], found[1])[6]
                self.incoming.extend(mqtt_packet.puback_packet(pid))
        return len(data)

    def setblocking(self, flag):
        pass

    def close(self):
        self.closed = True
