"""The weights blob: every constant array of a model, 64-byte aligned, behind a checked header."""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from ..memory_plan import align_up

WEIGHTS_TAG = b"QCWEIGHT"            # first 8 bytes of every weights blob
HEADER_BYTES = 64                    # tag + 32-byte digest of the payload, padded


class WeightsBlob:
    """Constant arrays, each 64-byte aligned, behind a header (tag + digest of the payload)."""

    def __init__(self):
        self._chunks: list[bytes] = []
        self._size = HEADER_BYTES

    def add(self, t: torch.Tensor) -> int:
        data = t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()
        offset = self._size
        pad = align_up(len(data)) - len(data)
        self._chunks.append(data + b"\0" * pad)
        self._size += len(data) + pad
        return offset

    def payload(self) -> bytes:
        return b"".join(self._chunks)

    def finish(self) -> tuple[bytes, str]:
        """(the blob, hex digest of its payload)."""
        payload = self.payload()
        digest = hashlib.sha256(payload).digest()
        header = WEIGHTS_TAG + digest
        return header + b"\0" * (HEADER_BYTES - len(header)) + payload, digest.hex()


def payload_checksum(payload: bytes) -> int:
    """Σ word_i · (2i + 1) mod 2^64 over the payload's little-endian 64-bit words (zero-padded):
    what the model's qc_model_init checks natively (render.py's qc_checksum), so a program that
    loads weights.bin itself (qc_model_main on a device) refuses a corrupt payload too. Any change
    to one word changes it (odd multipliers are invertible mod 2^64); it guards against corruption,
    not against tampering, which the sha256 in the header and the manifest are for."""
    words = np.frombuffer(payload + b"\0" * (-len(payload) % 8), dtype="<u8")
    odd = np.arange(words.size, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    return int(np.sum(words * odd, dtype=np.uint64))
