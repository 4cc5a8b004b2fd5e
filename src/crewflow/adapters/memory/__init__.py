"""In-memory adapters of the embedded deployment (one process): revocations, rate limits."""

from crewflow.adapters.memory.limits import MemoryRateLimiter, MemoryTokenRevocations

__all__ = ["MemoryRateLimiter", "MemoryTokenRevocations"]
