# Ed25519 signature verification (RFC 8032, section 5.1.7) in plain Python, for the node.
#
# MicroPython has no public-key code and its hashlib has no SHA-512 on the boards (the
# unix port lacks it too), so both live here: a SHA-512 that takes its input in pieces
# (the signed text is streamed into it, never joined in RAM) and the verify step on the
# twisted Edwards curve in extended coordinates. Verification only: no secrets, so no
# constant-time concerns. CPython runs the same code (tests compare it with hashlib and
# with the RFC vectors); ``sha512`` prefers the interpreter's own when it has one.

try:
    import hashlib as _hashlib
except ImportError:  # pragma: no cover - every port here has hashlib
    _hashlib = None  # type: ignore[assignment]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

_M64 = 0xFFFFFFFFFFFFFFFF

# SHA-512 round constants (FIPS 180-4, 4.2.3), as 32-bit halves: 80 words of 64 bits.
_K_HEX = (
    "428a2f98d728ae227137449123ef65cdb5c0fbcfec4d3b2fe9b5dba58189dbbc3956c25bf348b538"
    "59f111f1b605d019923f82a4af194f9bab1c5ed5da6d8118d807aa98a303024212835b0145706fbe"
    "243185be4ee4b28c550c7dc3d5ffb4e272be5d74f27b896f80deb1fe3b1696b19bdc06a725c71235"
    "c19bf174cf692694e49b69c19ef14ad2efbe4786384f25e30fc19dc68b8cd5b5240ca1cc77ac9c65"
    "2de92c6f592b02754a7484aa6ea6e4835cb0a9dcbd41fbd476f988da831153b5983e5152ee66dfab"
    "a831c66d2db43210b00327c898fb213fbf597fc7beef0ee4c6e00bf33da88fc2d5a79147930aa725"
    "06ca6351e003826f142929670a0e6e7027b70a8546d22ffc2e1b21385c26c9264d2c6dfc5ac42aed"
    "53380d139d95b3df650a73548baf63de766a0abb3c77b2a881c2c92e47edaee692722c851482353b"
    "a2bfe8a14cf10364a81a664bbc423001c24b8b70d0f89791c76c51a30654be30d192e819d6ef5218"
    "d69906245565a910f40e35855771202a106aa07032bbd1b819a4c116b8d2d0c81e376c085141ab53"
    "2748774cdf8eeb9934b0bcb5e19b48a8391c0cb3c5c95a634ed8aa4ae3418acb5b9cca4f7763e373"
    "682e6ff3d6b2b8a3748f82ee5defb2fc78a5636f43172f6084c87814a1f0ab728cc702081a6439ec"
    "90befffa23631e28a4506cebde82bde9bef9a3f7b2c67915c67178f2e372532bca273eceea26619c"
    "d186b8c721c0c207eada7dd6cde0eb1ef57d4f7fee6ed17806f067aa72176fba0a637dc5a2c898a6"
    "113f9804bef90dae1b710b35131c471b28db77f523047d8432caab7b40c724933c9ebe0a15c9bebc"
    "431d67c49c100d4c4cc5d4becb3e42b6597f299cfc657e2a5fcb6fab3ad6faec6c44198c4a475817"
)
_H0_HEX = (
    "6a09e667f3bcc908bb67ae8584caa73b3c6ef372fe94f82ba54ff53a5f1d36f1"
    "510e527fade682d19b05688c2b3e6c1f1f83d9abfb41bd6b5be0cd19137e2179"
)


def _words(text: str) -> "list[int]":
    return [int(text[i : i + 16], 16) for i in range(0, len(text), 16)]


_K: "list[int] | None" = None  # built on first use: the node loads this module rarely


class Sha512:
    """SHA-512 in pure Python: ``update`` in pieces, ``digest`` once (64 bytes)."""

    def __init__(self, data: bytes = b"") -> None:
        global _K
        if _K is None:
            _K = _words(_K_HEX)
        self._h = _words(_H0_HEX)
        self._buf = b""
        self._len = 0
        if data:
            self.update(data)

    def update(self, data: bytes) -> None:
        self._len += len(data)
        buf = self._buf + bytes(data)
        end = len(buf) - len(buf) % 128
        for i in range(0, end, 128):
            self._block(buf[i : i + 128])
        self._buf = buf[end:]

    def digest(self) -> bytes:
        bits = self._len * 8
        pad = b"\x80" + b"\x00" * ((111 - self._len) % 128) + bits.to_bytes(16, "big")
        saved = self._h[:], self._buf, self._len
        self.update(pad)
        out = b"".join(h.to_bytes(8, "big") for h in self._h)
        self._h, self._buf, self._len = saved
        return out

    def _block(self, block: bytes) -> None:
        k = _K or []
        w = [int.from_bytes(block[i : i + 8], "big") for i in range(0, 128, 8)]
        for t in range(16, 80):
            x = w[t - 15]
            s0 = ((x >> 1) | (x << 63)) ^ ((x >> 8) | (x << 56)) ^ (x >> 7)
            x = w[t - 2]
            s1 = ((x >> 19) | (x << 45)) ^ ((x >> 61) | (x << 3)) ^ (x >> 6)
            w.append((w[t - 16] + (s0 & _M64) + w[t - 7] + (s1 & _M64)) & _M64)
        a, b, c, d, e, f, g, h = self._h
        for t in range(80):
            s1 = ((e >> 14) | (e << 50)) ^ ((e >> 18) | (e << 46)) ^ ((e >> 41) | (e << 23))
            ch = (e & f) ^ (~e & g)
            t1 = (h + (s1 & _M64) + (ch & _M64) + k[t] + w[t]) & _M64
            s0 = ((a >> 28) | (a << 36)) ^ ((a >> 34) | (a << 30)) ^ ((a >> 39) | (a << 25))
            t2 = ((s0 & _M64) + ((a & b) ^ (a & c) ^ (b & c))) & _M64
            h, g, f, e = g, f, e, (d + t1) & _M64
            d, c, b, a = c, b, a, (t1 + t2) & _M64
        new = (a, b, c, d, e, f, g, h)
        hs = self._h
        self._h = [(hs[i] + new[i]) & _M64 for i in range(8)]


def sha512(data: bytes = b"") -> "Any":
    """A SHA-512 hasher: the interpreter's own when it has one, else ``Sha512``."""
    fn = getattr(_hashlib, "sha512", None) if _hashlib is not None else None
    if fn is not None:
        return fn(data)
    return Sha512(data)


# ---------------------------------------------------------------- the curve (RFC 8032 5.1)

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = 37095705934669439343138083508754565189542113879843219016388785533085940283555
_SQRT_M1 = 19681161376707505956807079304988542015446066515923890162744021073123829784752
_BX = 15112221349535400772501151409588531511454012693041857206046113283949847762202
_BY = 46316835694926478169428394003475163141307993866256225615783033603165251855960

Point = "tuple[int, int, int, int]"  # extended coordinates X, Y, Z, T (x = X/Z, y = Y/Z)


def _add(p: "tuple[int, int, int, int]", q: "tuple[int, int, int, int]") -> "Any":
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a = (y1 - x1) * (y2 - x2) % _P
    b = (y1 + x1) * (y2 + x2) % _P
    c = 2 * _D * t1 * t2 % _P
    d = 2 * z1 * z2 % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _double(p: "tuple[int, int, int, int]") -> "Any":
    x1, y1, z1, _t1 = p
    a = x1 * x1 % _P
    b = y1 * y1 % _P
    c = 2 * z1 * z1 % _P
    h = a + b
    e = h - (x1 + y1) * (x1 + y1)
    g = a - b
    f = c + g
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _decode_point(data: bytes) -> "tuple[int, int, int, int] | None":
    """RFC 8032 5.1.3; None for bytes that are not a point of the curve."""
    if len(data) != 32:
        return None
    y = int.from_bytes(data, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= _P:
        return None
    u = (y * y - 1) % _P
    v = (_D * y * y + 1) % _P
    x = u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P) % _P
    vx2 = v * x * x % _P
    if vx2 != u:
        if vx2 != (_P - u) % _P:
            return None
        x = x * _SQRT_M1 % _P
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = _P - x
    return (x, y, 1, x * y % _P)


def _equal(p: "tuple[int, int, int, int]", q: "tuple[int, int, int, int]") -> bool:
    return (p[0] * q[2] - q[0] * p[2]) % _P == 0 and (p[1] * q[2] - q[1] * p[2]) % _P == 0


def verify(
    public: bytes,
    signature: bytes,
    message: "bytes | Callable[[Any], None]",
    tick: "Callable[[], Any] | None" = None,
) -> bool:
    """Whether ``signature`` (64 bytes) is ``public``'s (32 bytes) Ed25519 signature of
    ``message``. ``message`` is bytes, or a function that feeds it to the hasher it is
    given (``feed(hasher)`` calls ``hasher.update`` piece by piece): a long signed text is
    then never held whole in RAM. ``tick`` is called every 16 bits of the scalars (a
    board feeds its watchdog there: a verify takes seconds on a microcontroller)."""
    if len(public) != 32 or len(signature) != 64:
        return False
    a = _decode_point(bytes(public))
    r = _decode_point(bytes(signature[:32]))
    if a is None or r is None:
        return False
    s = int.from_bytes(bytes(signature[32:]), "little")
    if s >= _L:
        return False
    hasher = sha512(bytes(signature[:32]))
    hasher.update(bytes(public))
    if isinstance(message, (bytes, bytearray, memoryview)):
        hasher.update(bytes(message))
    else:
        message(hasher)
    k = int.from_bytes(hasher.digest(), "little") % _L
    # [s]B - [k]A, by one pass over the bits of both scalars (Shamir's trick)
    base = (_BX, _BY, 1, _BX * _BY % _P)
    neg_a = ((_P - a[0]) % _P, a[1], a[2], (_P - a[3]) % _P)
    both = _add(base, neg_a)
    acc = (0, 1, 1, 0)
    for i in range(255, -1, -1):
        acc = _double(acc)
        bit_s = (s >> i) & 1
        bit_k = (k >> i) & 1
        if bit_s and bit_k:
            acc = _add(acc, both)
        elif bit_s:
            acc = _add(acc, base)
        elif bit_k:
            acc = _add(acc, neg_a)
        if tick is not None and not i & 15:
            tick()
    return _equal(acc, r)
