"""The real clock and id generator."""

from __future__ import annotations

import time
import uuid

__all__ = ["SystemClock", "UuidGenerator"]


class SystemClock:
    def now(self) -> float:
        return time.time()


class UuidGenerator:
    def new_id(self) -> str:
        return uuid.uuid4().hex
