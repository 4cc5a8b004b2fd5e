"""Throttling and password policy helpers of the auth use cases."""

from __future__ import annotations

import pytest

from crewflow.application.auth import address_bucket, password_problem

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("addr", "bucket"), [
    ("203.0.113.7", "203.0.113.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
    ("::ffff:203.0.113.7", "203.0.113.7"),
    ("testclient", "testclient"),
])  # fmt: skip
def test_ipv6_clients_are_throttled_per_64_and_ipv4_per_address(addr: str, bucket: str) -> None:
    assert address_bucket(addr) == bucket


def test_password_policy() -> None:
    assert password_problem("correct horse battery") is None
    assert password_problem("short") is not None
    assert password_problem("é" * 36) is None  # 72 bytes
    assert password_problem("é" * 37) is not None  # 74 bytes: bcrypt would ignore the end
    assert password_problem("twelve chars\x00") is not None
