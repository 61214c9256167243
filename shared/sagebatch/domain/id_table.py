"""FirstLines: the first line that named each id, in 12 bytes a slot, for the duplicate-id notes of a 10M-line job.

`domain.results.DuplicateIds` keys ids by an 8-byte digest. In a dict each entry costs about 100 bytes (two int
objects and the dict's slot): ~100 MB at 1M ids, ~1 GB at 10M. This table keeps the digests in one flat
`array('Q')` and the lines in one `array('I')`, open addressing with linear probing, at most 70% full: 24 MB at 1M
ids, 200 MB at 10M. A digest of 0 marks an empty slot, so a digest of 0 is stored as 1 (one id in 2^64 could then
share a note with another: a note, never a lost result).

The finalizer assembles a large job across several invocations, so the table must outlive one: `take_new` gives
the entries added since the last call, packed (12 bytes each), for the finalizer to save beside its checkpoint, and
`load` adds packed entries back. Pure: no I/O.
"""

from __future__ import annotations

from array import array

_MAX_LOAD = 0.7
_MIN_SLOTS = 1024


class FirstLines:
    """digest -> the first line that named it. Behaves like `dict.setdefault` for DuplicateIds."""

    def __init__(self) -> None:
        slots = _MIN_SLOTS
        self._keys = array("Q", [0]) * slots
        self._lines = array("I", [0]) * slots
        self._mask = slots - 1
        self._count = 0
        self._new_keys = array("Q")
        self._new_lines = array("I")

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        """Memory held by the table's arrays (the entries not yet taken included)."""
        arrays = (self._keys, self._lines, self._new_keys, self._new_lines)
        return sum(len(values) * values.itemsize for values in arrays)

    def setdefault(self, key: int, default: int, /) -> int:
        """The line stored for `key`, storing `default` first if there is none."""
        line, added = self._insert(key or 1, default)
        if added:
            self._new_keys.append(key or 1)
            self._new_lines.append(default)
        return line

    def _insert(self, key: int, line: int) -> tuple[int, bool]:
        keys = self._keys
        slot = key & self._mask
        while True:
            found = keys[slot]
            if found == key:
                return self._lines[slot], False
            if found == 0:
                break
            slot = (slot + 1) & self._mask
        keys[slot] = key
        self._lines[slot] = line
        self._count += 1
        if self._count > len(keys) * _MAX_LOAD:
            self._grow()
        return line, True

    def take_new(self) -> bytes:
        """The entries added since the last call (or since the start), packed; empty when there are none."""
        packed = self._new_keys.tobytes() + self._new_lines.tobytes()
        self._new_keys = array("Q")
        self._new_lines = array("I")
        return packed

    def load(self, packed: bytes) -> None:
        """Add entries packed by `take_new` (of an earlier table); they are not new to this one."""
        count = len(packed) // 12
        keys, lines = array("Q"), array("I")
        keys.frombytes(packed[: count * 8])
        lines.frombytes(packed[count * 8 : count * 12])
        for key, line in zip(keys, lines, strict=True):
            self._insert(key, line)  # not new: already saved where they came from

    def _grow(self) -> None:
        old_keys, old_lines = self._keys, self._lines
        slots = len(old_keys) * 2
        self._keys = array("Q", [0]) * slots
        self._lines = array("I", [0]) * slots
        self._mask = slots - 1
        keys, lines, mask = self._keys, self._lines, self._mask
        for key, line in zip(old_keys, old_lines, strict=True):
            if key:
                slot = key & mask
                while keys[slot]:
                    slot = (slot + 1) & mask
                keys[slot] = key
                lines[slot] = line
