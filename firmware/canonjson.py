# Canonical JSON as TUF signs it (python-tuf's CanonicalJSONSerializer, that is
# securesystemslib.formats.encode_canonical, then UTF-8): keys sorted, no whitespace,
# "," and ":" as separators, strings in double quotes with only backslash and double
# quote escaped (every other character, control or not, as it is), integers in decimal,
# true/false/null; floats are not allowed.
#
# ``write(value, out)`` hands the text out piece by piece (``out`` takes bytes), so a
# signature check can stream it into its hash without holding it whole in RAM.

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable


class CanonicalError(ValueError):
    """The value has no canonical JSON form (a float, an unknown type, a non-str key)."""


def _string(text: str) -> bytes:
    return b'"' + text.replace("\\", "\\\\").replace('"', '\\"').encode() + b'"'


def write(value: "Any", out: "Callable[[bytes], Any]") -> None:
    """Write the canonical form of ``value`` to ``out`` in pieces."""
    if value is True:
        out(b"true")
    elif value is False:
        out(b"false")
    elif value is None:
        out(b"null")
    elif isinstance(value, str):
        out(_string(value))
    elif isinstance(value, int):
        out(str(value).encode())
    elif isinstance(value, (list, tuple)):
        out(b"[")
        first = True
        for item in value:
            if not first:
                out(b",")
            first = False
            write(item, out)
        out(b"]")
    elif isinstance(value, dict):
        keys = list(value.keys())
        for key in keys:
            if not isinstance(key, str):
                raise CanonicalError("object key %r is not a string" % (key,))
        keys.sort()
        out(b"{")
        first = True
        for key in keys:
            if not first:
                out(b",")
            first = False
            out(_string(key))
            out(b":")
            write(value[key], out)
        out(b"}")
    else:
        raise CanonicalError("no canonical form for %s" % (type(value).__name__,))


def encode(value: "Any") -> bytes:
    """The canonical form of ``value`` as one bytes object (for small values and tests)."""
    parts: "list[bytes]" = []
    write(value, parts.append)
    return b"".join(parts)
