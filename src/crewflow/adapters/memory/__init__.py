"""In-memory adapters of the embedded deployment (one process): revocations, rate limits, user status."""

from crewflow.adapters.memory.limits import MemoryRateLimiter, MemoryTokenRevocations, UserStatus, UserStatusCache

__all__ = ["MemoryRateLimiter", "MemoryTokenRevocations", "UserStatus", "UserStatusCache"]
