"""A hash table from 16-byte account ids to table rows, built and probed with numpy arrays.

The replay looks up two ids per transfer; a Python dict costs a bytes object and a hash per id,
this costs a few array passes per block. Open addressing with linear probing at a load ≤ 1/2; the
slot is the top bits of a multiplicative mix of the id's two 64-bit halves (wrapping u64
arithmetic). ``lookup`` answers None when any id is unknown: the caller then asks the dict, which
names the id. Pure; the rows it returns are checked against the stored ids, so a collision can only
cost a probe, never a wrong row.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

_MIX0: Final = np.uint64(0x9E37_79B9_7F4A_7C15)
_MIX1: Final = np.uint64(0xC2B2_AE3D_27D4_EB4F)

Words = npt.NDArray[np.uint64]  # (n, 2): an id's two little-endian u64 halves
Rows = npt.NDArray[np.intp]


class IdTable:
    def __init__(self, words: Words) -> None:
        """Index ``words[r]`` (distinct ids) as row ``r``."""
        n = len(words)
        self.bits = max(4, (2 * n).bit_length())
        self.mask = (1 << self.bits) - 1
        self.words = words
        self.slots = np.full(1 << self.bits, -1, np.intp)
        self.probes_max = 0
        pending = np.arange(n, dtype=np.intp)
        slot = self._slot(words)
        while len(pending):
            self.probes_max += 1
            free = np.flatnonzero(self.slots[slot] < 0)
            taken, first = np.unique(slot[free], return_index=True)  # one id per free slot
            self.slots[taken] = pending[free[first]]
            left = np.ones(len(pending), bool)
            left[free[first]] = False
            pending, slot = pending[left], (slot[left] + 1) & self.mask

    def _slot(self, words: Words) -> Rows:
        mixed = (words[:, 0] * _MIX0) ^ (words[:, 1] * _MIX1)
        return (mixed >> np.uint64(64 - self.bits)).astype(np.intp)

    def lookup(self, words: Words) -> Rows | None:
        """The row of every id, or None if one is not in the table."""
        out = np.empty(len(words), np.intp)
        todo = np.arange(len(words), dtype=np.intp)
        slot = self._slot(words)
        for _ in range(self.probes_max):
            rows = self.slots[slot]
            if (rows < 0).any():
                return None  # an empty slot before the id: unknown
            stored, wanted = self.words[rows], words[todo]
            hit = (stored[:, 0] == wanted[:, 0]) & (stored[:, 1] == wanted[:, 1])
            out[todo[hit]] = rows[hit]
            todo, slot = todo[~hit], (slot[~hit] + 1) & self.mask
            if not len(todo):
                return out
        return None
