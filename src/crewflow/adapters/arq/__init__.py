"""The arq job queue: ``ArqJobQueue`` (enqueue and cancel, used by the API) and ``CrewflowWorker`` (runs the
jobs in ``crewflow worker`` processes). See ADR 0011."""

from crewflow.adapters.arq.queue import DEFAULT_QUEUE, ArqJobQueue, QueueKeys

__all__ = ["DEFAULT_QUEUE", "ArqJobQueue", "QueueKeys"]
