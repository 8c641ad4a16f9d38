"""The file container shared by the versioned formats (the .bnn model file and the program bundle).

Layout (little-endian): 8-byte magic, u32 format version, u32 header length, a JSON header padded with
spaces to 8 bytes, binary blobs (each padded with zeros to 8 bytes), and the sha256 of every byte
before it. The header's "kind" names what the file holds. numpy-free.
"""

import hashlib
import json
import struct

__all__ = ["ALIGN", "pad", "pack_container", "unpack_container"]

_PREAMBLE = struct.Struct("<8sII")   # magic, format version, header length
_DIGEST = 32                         # sha256 of every byte before it
ALIGN = 8


def pad(data):
    """`data` padded with zeros to a multiple of ALIGN bytes."""
    return data + b"\0" * ((-len(data)) % ALIGN)


def pack_container(magic, version, header, blobs):
    """Bytes of a container: `header` (a JSON-serialisable dict) and the already padded `blobs`."""
    text = json.dumps(header, sort_keys=True).encode()
    text += b" " * ((-(_PREAMBLE.size + len(text))) % ALIGN)
    body = _PREAMBLE.pack(magic, version, len(text)) + text + b"".join(blobs)
    return body + hashlib.sha256(body).digest()


def unpack_container(data, *, magic, version, kind, origin, what, version_name, fail):
    """(header dict, blob bytes) of a container, or `fail(message)` for any defect.

    what: the file's description in messages ("a program bundle"); version_name: the name of its
    version ("bundle format"); fail: raises the format's own exception.
    """
    data = bytes(data)
    if len(data) < _PREAMBLE.size or data[:len(magic)] != magic:
        if len(data) < _PREAMBLE.size and magic.startswith(data[:len(magic)]):
            fail(f"{origin} is truncated ({len(data)} bytes)")
        fail(f"{origin} is not {what} (its first bytes are not {magic!r})")
    _, found, header_len = _PREAMBLE.unpack_from(data)
    if found != version:
        fail(f"{origin} has {version_name} version {found}; this reader reads version {version}")
    if len(data) < _PREAMBLE.size + header_len + _DIGEST:
        fail(f"{origin} is truncated ({len(data)} bytes, its header alone needs "
             f"{_PREAMBLE.size + header_len + _DIGEST})")
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        fail(f"{origin} is corrupt or truncated (sha256 checksum mismatch)")
    try:
        header = json.loads(body[_PREAMBLE.size:_PREAMBLE.size + header_len].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        fail(f"{origin} has an unreadable header: {error}")
    if not isinstance(header, dict) or header.get("kind") != kind:
        found_kind = header.get("kind") if isinstance(header, dict) else None
        fail(f"{origin} holds a {found_kind!r}, not a {kind!r}")
    return header, body[_PREAMBLE.size + header_len:]
