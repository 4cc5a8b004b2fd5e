"""Hypothesis profiles: ``ci`` (many examples, derandomized) and ``dev`` (fewer, random).

Chosen by ``HYPOTHESIS_PROFILE``; when unset, ``ci`` if the ``CI`` environment variable is set, else ``dev``."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=500,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))
