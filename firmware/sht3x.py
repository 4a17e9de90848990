# Sensirion SHT3x cabinet temperature and humidity sensor over I2C (datasheet, v6).
#
# One single-shot measurement: write 0x2400 (high repeatability, no clock stretching),
# wait for the conversion (15 ms max), read six bytes: temperature MSB, LSB, CRC, then
# humidity MSB, LSB, CRC. CRC-8, polynomial 0x31, initial value 0xFF (datasheet 4.12:
# CRC(0xBEEF) = 0x92). The bus is any object with writeto/readfrom (machine.I2C, or the
# simulated bus of hal_sim, which uses encode() to answer like the chip).

try:
    import clock
except ImportError:  # CPython: the firmware is the package ``firmware``
    from firmware import clock

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

ADDRESS = 0x44
MEASURE = b"\x24\x00"
CONVERSION_MS = 16
_EIO = 5


def crc8(data: "bytes | bytearray") -> int:
    crc = 0xFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def decode(raw: "bytes | bytearray") -> tuple[float, float]:
    """(temperature C, relative humidity %) from the six bytes; OSError when corrupt."""
    if len(raw) != 6:
        raise OSError(_EIO, "sht3x: %d bytes, wanted 6" % len(raw))
    if crc8(raw[0:2]) != raw[2] or crc8(raw[3:5]) != raw[5]:
        raise OSError(_EIO, "sht3x: CRC mismatch")
    t_raw = (raw[0] << 8) | raw[1]
    rh_raw = (raw[3] << 8) | raw[4]
    return round(-45 + 175 * t_raw / 65535, 2), round(100 * rh_raw / 65535, 2)


def encode(temp_c: float, rh: float) -> bytes:
    """The six bytes the chip sends for these values (for the simulated bus)."""
    t_raw = max(0, min(65535, round((temp_c + 45) * 65535 / 175)))
    rh_raw = max(0, min(65535, round(rh * 65535 / 100)))
    t = bytes([t_raw >> 8, t_raw & 0xFF])
    h = bytes([rh_raw >> 8, rh_raw & 0xFF])
    return t + bytes([crc8(t)]) + h + bytes([crc8(h)])


def measure(i2c: "Any", address: int = ADDRESS) -> tuple[float, float]:
    """One measurement; OSError when the chip does not answer or answers garbage."""
    i2c.writeto(address, MEASURE)
    clock.sleep_ms(CONVERSION_MS)
    return decode(i2c.readfrom(address, 6))
