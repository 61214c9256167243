"""Is an input file UTF-8 JSON Lines at all? Decided from its first bytes, before any line is read.

A file saved as UTF-16 or UTF-32 (Windows tools do this) would otherwise become one failed line per line with
nonsense reasons; gzip would be bytes. These fail the job with one clear sentence instead. A UTF-8 byte-order
mark is fine: the worker skips it, and the first record stays line 1.
"""

from __future__ import annotations

GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"
SNIFF_BYTES = 64
# Shorter than this, a file is too small to tell an encoding from a bad line by its NULs (one UTF-16 record is more).
_MIN_SAMPLE = 16

_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)


def sniff_problem(head: bytes) -> str | None:
    """Why a file starting with `head` is not UTF-8 JSON Lines, or None if it may be."""
    if head.startswith(GZIP_MAGIC):
        return "the input is gzip-compressed; upload uncompressed JSONL (one JSON object per line)"
    for bom, name in _BOMS:
        if head.startswith(bom):
            return f"input must be UTF-8 JSON Lines; this file looks like {name} (byte-order mark {bom.hex(' ')})"
    sample = head[:SNIFF_BYTES]
    nuls = sample.count(b"\x00")
    # JSON text never holds a NUL byte, but one stray NUL is one bad line, not a wrong encoding. UTF-16 text
    # (mostly ASCII, as JSON is) is about every other byte NUL, UTF-32 three bytes of four.
    if len(sample) >= _MIN_SAMPLE and nuls >= len(sample) * 2 // 5:
        name = "UTF-32" if nuls >= len(sample) * 5 // 8 else "UTF-16"
        return f"input must be UTF-8 JSON Lines; this file looks like {name} (NUL bytes in its first {len(sample)} bytes)"
    return None
