"""Bound the memory a pooled PostgreSQL connection accumulates while serving many tenants.

A PostgreSQL backend caches the catalog entries (relcache, catcache, plans) of every table it has touched
and never gives them back; a connection that served every table of 2,000 tenant schemas holds hundreds of
MB (``bench/tenancy.py`` measures it). Time-based ``pool_recycle`` does not bound that during a busy hour,
so :func:`limit_tenants_per_connection` counts the distinct tenant schemas a pooled connection has been
scoped to (the ``search_path`` every tenant transaction sets) and, once the budget is spent, makes the
pool replace that connection at its next checkout (SQLAlchemy's documented ``DisconnectionError``-on-
checkout mechanism: the pool discards the connection and connects anew, the caller never sees an error).

Worst-case backend memory is then about ``pool size * max_tenants * catalog cost per tenant`` instead of
``pool size * all tenants``; the price is one new connection (a few ms) per ``max_tenants`` distinct
tenants served by a connection.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["limit_tenants_per_connection", "tenants_served"]

_INFO_KEY = "crewflow.tenant_schemas"
_SCHEMA_VALUE = re.compile(r'^"?(tenant_[a-z0-9_]+)"?$')
_SET_SEARCH_PATH = re.compile(r'search_path\s+(?:TO|=)\s+"?(tenant_[a-z0-9_]+)"?', re.IGNORECASE)


def _schemas_in(statement: str, parameters: Any) -> list[str]:
    """Tenant schemas a statement scopes the connection to: ``SET [LOCAL] search_path TO "tenant_x"`` or
    ``set_config('search_path', $1, ...)`` with ``"tenant_x"`` among the parameters."""
    if isinstance(parameters, dict):
        values = list(parameters.values())
    elif isinstance(parameters, list | tuple):
        values = list(parameters)
    else:
        values = []
    if "search_path" not in statement and "search_path" not in values:
        return []
    found: list[str] = _SET_SEARCH_PATH.findall(statement)
    if "set_config" in statement:
        for value in values:
            match = _SCHEMA_VALUE.match(value) if isinstance(value, str) else None
            if match:
                found.append(match.group(1))
    return found


def tenants_served(info: dict[Any, Any]) -> int:
    """How many distinct tenant schemas the connection behind ``info`` (``Connection.info``) has served."""
    return len(info.get(_INFO_KEY, ()))


def limit_tenants_per_connection(engine: AsyncEngine, max_tenants: int = 200) -> None:
    """Replace a pooled connection after it has served ``max_tenants`` distinct tenant schemas."""
    if max_tenants < 1:
        raise ValueError("max_tenants must be at least 1")
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "before_cursor_execute")
    def _count(conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _executemany: bool) -> None:
        schemas = _schemas_in(statement, parameters)
        if schemas:
            conn.info.setdefault(_INFO_KEY, set()).update(schemas)

    @event.listens_for(sync_engine, "checkout")
    def _recycle(_dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        # ``record.info`` is the same dict as ``Connection.info`` and is emptied when the connection is replaced.
        if len(record.info.get(_INFO_KEY, ())) >= max_tenants:
            raise DisconnectionError(f"connection served {max_tenants} tenant schemas: replacing it")
