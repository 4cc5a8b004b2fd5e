"""``crewflow worker`` (run executions from the Redis queue) and ``crewflow worker check`` (health check).

Exit codes: 0 success (the worker stopped cleanly; ``check``: a worker heartbeat is fresh); 1 failure (Redis
unreachable; ``check``: no fresh heartbeat); 2 invalid input (bad option, ``CREWFLOW_REDIS_URL`` unset).
Errors are one readable line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

__all__ = ["cmd_worker", "register"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    worker = subparsers.add_parser(
        "worker",
        help="run executions from the Redis queue (needs CREWFLOW_REDIS_URL); `worker check`: health check",
        description="Take executions from the arq queue on CREWFLOW_REDIS_URL and run them until SIGTERM/SIGINT: "
        "running executions are then interrupted (completed nodes are kept) and queued again for another worker. "
        "`crewflow worker check` exits 0 when a worker of the queue sent a heartbeat recently, 1 otherwise.",
    )
    worker.add_argument("action", nargs="?", choices=["check"], help="check: health check of the queue's workers")
    worker.add_argument("--concurrency", type=int, default=None,
                        help="executions run at once (default: $CREWFLOW_WORKER_CONCURRENCY, else 4)")  # fmt: skip
    worker.add_argument("--queue", default=None, help="queue name (default: $CREWFLOW_QUEUE, else crewflow:queue)")
    worker.add_argument("--burst", action="store_true", help="stop once the queue is empty")
    worker.add_argument("--grace", type=float, default=None,
                        help="seconds running executions get to finish on SIGTERM before they are interrupted and "
                        "queued again (default: $CREWFLOW_WORKER_GRACE, else 0)")  # fmt: skip
    worker.add_argument("--max-age", type=float, default=15.0,
                        help="check: a heartbeat older than this many seconds is stale (default 15)")  # fmt: skip
    worker.set_defaults(func=cmd_worker)


def _fail(message: str, code: int) -> int:
    print(f"crewflow worker: {message}", file=sys.stderr)
    return code


def cmd_worker(args: argparse.Namespace) -> int:
    from redis.exceptions import RedisError

    from crewflow.entrypoints.worker import WorkerOptions, check_workers, run_worker
    from crewflow.settings import Settings

    try:
        settings = Settings.from_env()
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)
    if not settings.redis_url:
        return _fail("CREWFLOW_REDIS_URL is not set (workers take executions from the Redis queue; without Redis, "
                     "`crewflow serve` runs them in-process)", EXIT_USAGE)  # fmt: skip
    try:
        options = WorkerOptions.from_settings(settings, queue=args.queue, concurrency=args.concurrency,
                                              burst=args.burst, grace=args.grace)  # fmt: skip
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)
    try:
        if args.action == "check":
            if args.max_age <= 0:
                return _fail("--max-age must be above 0", EXIT_USAGE)
            alive = asyncio.run(check_workers(settings.redis_url, options.queue, args.max_age))
            if not alive:
                return _fail(f"unhealthy: no worker heartbeat on queue {options.queue!r} in the last "
                             f"{args.max_age:g} s", EXIT_FAILED)  # fmt: skip
            print(f"crewflow worker: ok: {len(alive)} worker(s) alive on queue {options.queue!r} "
                  f"(latest heartbeat {alive[0].age:.1f} s ago)")  # fmt: skip
            return EXIT_OK
        stats = asyncio.run(run_worker(settings, options))
    except (RedisError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return _fail(f"Redis error: {first}", EXIT_FAILED)
    print(f"crewflow worker: stopped ({stats['complete']} complete, {stats['failed']} failed, "
          f"{stats['requeued']} queued again)", file=sys.stderr)  # fmt: skip
    return EXIT_OK
