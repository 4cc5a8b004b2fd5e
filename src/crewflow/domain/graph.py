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
    if cycles:
        # DFS back edges alone can miss nodes (a->b->a plus a->c->b: c is on a cycle but reached after b is
        # finished), so every node of a strongly connected component not yet named gets a cycle through it.
        covered = {n for cycle in cycles for n in cycle}
        component = _components(id_list, children)
        for node in id_list:
            if node not in covered and (through := _cycle_through(node, children, component)):
                cycles.append(through)
                covered.update(through)
    return cycles


def _components(ids: list[str], children: dict[str, list[str]]) -> dict[str, int]:
    """Strongly connected component number of each node (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    component: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    counter = 0
    for root in ids:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, child_index = work.pop()
            if child_index == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            if child_index < len(children[node]):
                work.append((node, child_index + 1))
                child = children[node][child_index]
                if child not in index:
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            for child in children[node]:
                if child in on_stack:
                    low[node] = min(low[node], low[child])
            if low[node] == index[node]:
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component[member] = index[node]
                    if member == node:
                        break
    return component


def _cycle_through(start: str, children: dict[str, list[str]], component: dict[str, int]) -> list[str]:
    """A shortest cycle through ``start`` inside its component (BFS), or [] when it is on none."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for child in children[node]:
                if component[child] != component[start]:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return path[::-1]
                if child not in came_from:
                    came_from[child] = node
                    following.append(child)
        frontier = following
    return []
