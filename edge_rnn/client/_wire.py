"""What both transports of the client share: a chunk as bytes, a reply as an array, the token's header."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ABANDON_S", "chunk_bytes", "output", "auth_headers"]

ABANDON_S = 1.0  # seconds a stream given up for a resumed one may take to close (best effort)


def chunk_bytes(x: Any) -> bytes:
    return np.ascontiguousarray(np.asarray(x, dtype="<f4")).tobytes()


def output(data: bytes, width: int | None) -> np.ndarray:
    y = np.frombuffer(data, dtype="<f4")
    return y.reshape(-1, width) if width else y


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}
