"""crewflow: draw AI workflows, run them on CrewAI with LLM-provider failover, watch them live.

The library API runs a flow in-process with no server::

    import crewflow
    result = crewflow.run("examples/research_write.yaml", inputs={"topic": "tides"})
"""

from crewflow.application.results import NodeResult, RunResult
from crewflow.domain.errors import FlowInvalid, Problem
from crewflow.domain.events import EventKind, ExecutionEvent
from crewflow.domain.flow import Edge, Flow, Node, NodeKind
from crewflow.domain.validation import validate_flow
from crewflow.entrypoints.library import arun, load_flow, run, stream

__version__ = "0.1.0"

__all__ = [
    "Edge",
    "EventKind",
    "ExecutionEvent",
    "Flow",
    "FlowInvalid",
    "Node",
    "NodeKind",
    "NodeResult",
    "Problem",
    "RunResult",
    "__version__",
    "arun",
    "load_flow",
    "run",
    "stream",
    "validate_flow",
]
