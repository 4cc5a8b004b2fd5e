"""Adjacency and ordering of a flow's DAG, computed once and shared by validation and the scheduler."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Graph", "find_cycles"]


@dataclass(frozen=True, slots=True)
class Graph:
    """An immutable DAG over node ids. ``order`` is a deterministic topological order (Kahn, by position)."""

    ids: tuple[str, ...]
    parents: dict[str, tuple[str, ...]]
    children: dict[str, tuple[str, ...]]
    order: tuple[str, ...]
    index: dict[str, int]

    @classmethod
    def build(cls, ids: Iterable[str], edges: Iterable[tuple[str, str]]) -> Graph:
        """Build from node ids and (source, target) pairs; edges naming unknown ids or repeated are ignored.

        Raises ``ValueError`` when the edges contain a cycle (validation reports cycles by name first)."""
        id_list = tuple(dict.fromkeys(ids))
        known = set(id_list)
        parents: dict[str, list[str]] = {i: [] for i in id_list}
        children: dict[str, list[str]] = {i: [] for i in id_list}
        seen: set[tuple[str, str]] = set()
        for source, target in edges:
            if source in known and target in known and (source, target) not in seen:
                seen.add((source, target))
                parents[target].append(source)
                children[source].append(target)
        position = {node_id: i for i, node_id in enumerate(id_list)}
        indegree = {i: len(parents[i]) for i in id_list}
        queue = [i for i in id_list if indegree[i] == 0]
        order: list[str] = []
        head = 0
        while head < len(queue):
            current = queue[head]
            head += 1
            order.append(current)
            released = []
            for child in children[current]:
                indegree[child] -= 1
                if indegree[child] == 0:
                    released.append(child)
            queue.extend(sorted(released, key=position.__getitem__))
        if len(order) != len(id_list):
            raise ValueError("graph has a cycle")
        return cls(
            ids=id_list,
            parents={k: tuple(v) for k, v in parents.items()},
            children={k: tuple(v) for k, v in children.items()},
            order=tuple(order),
            index={node_id: i for i, node_id in enumerate(order)},
        )

    def ancestors(self, node_id: str) -> set[str]:
        found: set[str] = set()
        stack = list(self.parents[node_id])
        while stack:
            current = stack.pop()
            if current not in found:
                found.add(current)
                stack.extend(self.parents[current])
        return found

    def descendants_of(self, roots: Iterable[str]) -> set[str]:
        found: set[str] = set()
        stack = list(roots)
        while stack:
            current = stack.pop()
            if current not in found:
                found.add(current)
                stack.extend(self.children[current])
        return found

    def critical_path_length(self, weight: dict[str, float]) -> float:
        """Longest weighted path (sum of node weights) through the DAG."""
        finish: dict[str, float] = {}
        for node_id in self.order:
            start = max((finish[p] for p in self.parents[node_id]), default=0.0)
            finish[node_id] = start + weight.get(node_id, 0.0)
        return max(finish.values(), default=0.0)


def find_cycles(ids: Iterable[str], edges: Iterable[tuple[str, str]]) -> list[list[str]]:
    """Each elementary cycle found by a DFS, as the list of its nodes in edge order (first node not
    repeated). Every node on some cycle appears in at least one reported cycle."""
    id_list = list(dict.fromkeys(ids))
    known = set(id_list)
    children: dict[str, list[str]] = {i: [] for i in id_list}
    for source, target in edges:
        if source in known and target in known and target not in children[source]:
            children[source].append(target)
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(id_list, white)
    cycles: list[list[str]] = []
    for root in id_list:
        if colour[root] != white:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = []
        while stack:
            node, child_index = stack.pop()
            if child_index == 0:
                colour[node] = grey
                path.append(node)
            if child_index < len(children[node]):
                stack.append((node, child_index + 1))
                child = children[node][child_index]
                if colour[child] == white:
                    stack.append((child, 0))
                elif colour[child] == grey:
                    cycles.append(path[path.index(child) :])
            else:
                colour[node] = black
                path.pop()
    return cycles
