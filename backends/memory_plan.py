"""Static memory plan: every intermediate tensor gets a fixed offset in one arena.

A buffer lives from the step that writes it first to the step that reads it last; two
buffers whose lifetimes overlap never share bytes. Placement is greedy, largest buffer
first, at the lowest offset that fits (deterministic: ties broken by creation order).
"""
from __future__ import annotations

from dataclasses import dataclass, field

ALIGN = 64   # cache line, and what AVX-512 loads like


def align_up(n: int, a: int = ALIGN) -> int:
    return (n + a - 1) // a * a


@dataclass(eq=False)
class Buffer:
    nbytes: int
    ident: int
    first: int = -1     # step that writes it first
    last: int = -1      # step that uses it last
    offset: int = -1

    def touch(self, step: int) -> None:
        self.first = step if self.first < 0 else min(self.first, step)
        self.last = max(self.last, step)

    def overlaps(self, other: "Buffer") -> bool:
        return self.first <= other.last and other.first <= self.last


@dataclass
class MemoryPlan:
    buffers: list = field(default_factory=list)
    arena_bytes: int = 0

    def new_buffer(self, nbytes: int) -> Buffer:
        buf = Buffer(int(nbytes), len(self.buffers))
        self.buffers.append(buf)
        return buf

    def solve(self) -> int:
        """Assign offsets; returns the arena size in bytes."""
        placed: list[Buffer] = []
        for buf in sorted(self.buffers, key=lambda b: (-b.nbytes, b.ident)):
            if buf.first < 0:           # never used: no space
                buf.offset = 0
                continue
            size = align_up(max(buf.nbytes, 1))
            busy = sorted((b.offset, b.offset + align_up(max(b.nbytes, 1))) for b in placed if b.overlaps(buf))
            offset = 0
            for lo, hi in busy:
                if offset + size <= lo:
                    break
                offset = max(offset, hi)
            buf.offset = offset
            placed.append(buf)
        self.arena_bytes = max((b.offset + align_up(max(b.nbytes, 1)) for b in placed), default=0)
        return self.arena_bytes
