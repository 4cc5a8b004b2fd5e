// Client-side checks run while drawing, so problems show on the nodes and edges before saving.
// They mirror the server's codes (src/crewflow/domain/validation.py); the server stays the judge, and its
// 422 problems are shown the same way (see problemsByTarget).

import type { FlowProblem } from '../api/errors';
import { edgeId, isValidNodeId, type Canvas } from './flowDoc';

export interface Catalog {
  /** Agent ids the node may name (the tenant's saved agents plus the document's embedded ones). */
  agents?: Iterable<string>;
  crews?: Iterable<string>;
  tools?: Iterable<string>;
}

const TEMPLATE_NODE_REF = /\{\{\s*nodes\.([A-Za-z_][A-Za-z0-9_-]*)/g;

function problem(code: string, message: string, target: { node?: string; edge?: [string, string]; nodes?: string[] } = {}): FlowProblem {
  if (target.node) return { code, message, where: `node '${target.node}'`, nodes: [target.node, ...(target.nodes ?? [])], edge: null };
  if (target.edge) return { code, message, where: `edge '${target.edge[0]}' -> '${target.edge[1]}'`, nodes: target.nodes ?? [], edge: target.edge };
  return { code, message, where: 'flow', nodes: target.nodes ?? [], edge: null };
}

export function validateCanvas(canvas: Pick<Canvas, 'nodes' | 'edges' | 'meta'>, catalog: Catalog = {}): FlowProblem[] {
  const out: FlowProblem[] = [];
  const { nodes, edges } = canvas;
  if (nodes.length === 0) return [problem('empty', 'a flow needs at least one node')];

  const counts = new Map<string, number>();
  for (const n of nodes) counts.set(n.id, (counts.get(n.id) ?? 0) + 1);
  for (const [id, c] of counts) if (c > 1) out.push(problem('duplicate_id', `${c} nodes share the id '${id}'`, { node: id }));
  for (const n of nodes) {
    if (!isValidNodeId(n.id)) out.push(problem('bad_id', 'ids use letters, digits, _ and -, start with a letter or _, ≤64 chars', { node: n.id }));
  }

  const ids = new Set(nodes.map((n) => n.id));
  const parents = new Map<string, string[]>([...ids].map((id) => [id, []]));
  const children = new Map<string, string[]>([...ids].map((id) => [id, []]));
  const edgeSeen = new Set<string>();
  for (const e of edges) {
    const key = edgeId(e.source, e.target);
    const pair: [string, string] = [e.source, e.target];
    if (edgeSeen.has(key)) {
      out.push(problem('duplicate_edge', 'the same edge appears twice', { edge: pair }));
      continue;
    }
    edgeSeen.add(key);
    const missing = [e.source, e.target].filter((x) => !ids.has(x));
    if (missing.length) {
      out.push(problem('dangling_edge', `points to no node: ${missing.join(', ')}`, { edge: pair }));
      continue;
    }
    parents.get(e.target)!.push(e.source);
    children.get(e.source)!.push(e.target);
  }

  for (const cycle of findCycles([...ids], children)) {
    out.push(problem('cycle', `cycle: ${[...cycle, cycle[0]].join(' → ')}`, { nodes: cycle }));
  }

  const agents = new Set([...(catalog.agents ?? []), ...Object.keys(canvas.meta.agents ?? {})]);
  const crews = new Set([...(catalog.crews ?? []), ...Object.keys(canvas.meta.crews ?? {})]);
  const tools = new Set([...(catalog.tools ?? []), ...Object.keys(canvas.meta.tools ?? {})]);
  const inputs = nodes.filter((n) => n.data.body.kind === 'input').map((n) => n.id);

  for (const n of nodes) {
    const b = n.data.body;
    const kids = children.get(n.id) ?? [];
    switch (b.kind) {
      case 'input':
        if ((parents.get(n.id) ?? []).length) out.push(problem('input_has_parents', 'an input node takes no parents', { node: n.id }));
        break;
      case 'output':
        if (kids.length) out.push(problem('output_has_children', 'an output node has no children', { node: n.id }));
        break;
      case 'agent':
        if (!b.agent) out.push(problem('missing_agent', 'choose an agent', { node: n.id }));
        else if (catalog.agents && !agents.has(b.agent)) out.push(problem('unknown_agent', `no agent '${b.agent}'`, { node: n.id }));
        if (!b.task || !b.task.trim()) out.push(problem('missing_task', 'an agent node needs a task', { node: n.id }));
        break;
      case 'crew':
        if (!b.crew) out.push(problem('missing_crew', 'choose a crew', { node: n.id }));
        else if (catalog.crews && !crews.has(b.crew)) out.push(problem('unknown_crew', `no crew '${b.crew}'`, { node: n.id }));
        break;
      case 'tool':
        if (!b.tool) out.push(problem('missing_tool', 'choose a tool', { node: n.id }));
        else if (catalog.tools && !tools.has(b.tool)) out.push(problem('unknown_tool', `no tool '${b.tool}'`, { node: n.id }));
        break;
      case 'router': {
        const routes = b.routes ?? [];
        if (!routes.length) out.push(problem('router_without_branches', 'a router needs at least one route', { node: n.id }));
        if (!b.default) out.push(problem('router_without_default', 'a router needs a default branch', { node: n.id }));
        const targets = new Set<string>();
        routes.forEach((r, i) => {
          if (!r.when || !r.when.trim()) out.push(problem('bad_expression', `route ${i + 1} has no condition`, { node: n.id }));
          if (!r.to) out.push(problem('unknown_branch', `route ${i + 1} goes nowhere`, { node: n.id }));
          else {
            targets.add(r.to);
            if (!kids.includes(r.to)) out.push(problem('branch_without_edge', `route to '${r.to}' has no edge`, { node: n.id }));
          }
        });
        if (b.default) {
          targets.add(b.default);
          if (!kids.includes(b.default)) out.push(problem('branch_without_edge', `default '${b.default}' has no edge`, { node: n.id }));
        }
        for (const k of kids) {
          if (!targets.has(k)) out.push(problem('edge_not_a_branch', `edge to '${k}' is not a route or the default`, { edge: [n.id, k] }));
        }
        break;
      }
    }
  }

  // Reachability from input nodes (only when the flow has any: the server then demands every node be reached).
  if (inputs.length) {
    const reached = new Set<string>();
    const stack = [...inputs];
    while (stack.length) {
      const id = stack.pop()!;
      if (reached.has(id)) continue;
      reached.add(id);
      stack.push(...(children.get(id) ?? []));
    }
    for (const id of ids) if (!reached.has(id)) out.push(problem('unreachable', 'no path from an input node', { node: id }));
  }

  // Templates may only read ancestors.
  for (const n of nodes) {
    const texts = [n.data.body.task, n.data.body.expected_output, n.data.body.value, ...Object.values(n.data.body.inputs ?? {})];
    const anc = ancestors(n.id, parents);
    const bad = new Set<string>();
    for (const t of texts) {
      if (typeof t !== 'string') continue;
      for (const m of t.matchAll(TEMPLATE_NODE_REF)) if (!anc.has(m[1])) bad.add(m[1]);
    }
    for (const ref of bad) {
      out.push(problem('not_an_ancestor', ids.has(ref) ? `reads '${ref}', which is not an ancestor` : `reads unknown node '${ref}'`, { node: n.id }));
    }
  }
  return out;
}

function ancestors(id: string, parents: Map<string, string[]>): Set<string> {
  const out = new Set<string>();
  const stack = [...(parents.get(id) ?? [])];
  while (stack.length) {
    const p = stack.pop()!;
    if (out.has(p)) continue;
    out.add(p);
    stack.push(...(parents.get(p) ?? []));
  }
  return out;
}

/** Elementary cycles found by DFS (one per back edge), each as the list of its nodes. */
export function findCycles(ids: string[], children: Map<string, string[]>): string[][] {
  const state = new Map<string, 0 | 1 | 2>();
  const stack: string[] = [];
  const cycles: string[][] = [];
  const seenKeys = new Set<string>();
  const visit = (id: string) => {
    state.set(id, 1);
    stack.push(id);
    for (const c of children.get(id) ?? []) {
      const s = state.get(c) ?? 0;
      if (s === 0) visit(c);
      else if (s === 1) {
        const cyc = stack.slice(stack.indexOf(c));
        const key = [...cyc].sort().join('|');
        if (!seenKeys.has(key)) {
          seenKeys.add(key);
          cycles.push(cyc);
        }
      }
    }
    stack.pop();
    state.set(id, 2);
  };
  for (const id of ids) if ((state.get(id) ?? 0) === 0) visit(id);
  return cycles;
}

export interface ProblemIndex {
  byNode: Map<string, FlowProblem[]>;
  byEdge: Map<string, FlowProblem[]>;
  /** Problems naming no node or edge the canvas has (shown in the flow-level list). */
  general: FlowProblem[];
}

/** Files each problem (client-side or from the server's 422) under the nodes and edge it names. */
export function problemsByTarget(problems: FlowProblem[], nodeIds?: Iterable<string>): ProblemIndex {
  const known = nodeIds ? new Set(nodeIds) : null;
  const byNode = new Map<string, FlowProblem[]>();
  const byEdge = new Map<string, FlowProblem[]>();
  const general: FlowProblem[] = [];
  const add = <K,>(m: Map<K, FlowProblem[]>, k: K, p: FlowProblem) => {
    const list = m.get(k) ?? [];
    if (!list.includes(p)) list.push(p);
    m.set(k, list);
  };
  for (const p of problems) {
    let placed = false;
    if (p.edge && p.edge.length === 2) {
      add(byEdge, edgeId(p.edge[0], p.edge[1]), p);
      placed = true;
    }
    let nodes = p.nodes ?? [];
    if (!nodes.length && !p.edge) {
      // Shape problems name their node only in `where`: "nodes[2] 'write'.retry.max_attempts".
      const m = /nodes\[\d+\] '([^']+)'/.exec(p.where ?? '') ?? /^node '([^']+)'/.exec(p.where ?? '');
      if (m) nodes = [m[1]];
    }
    for (const n of nodes) {
      if (known && !known.has(n)) continue;
      add(byNode, n, p);
      placed = true;
    }
    if (!placed) general.push(p);
  }
  return { byNode, byEdge, general };
}
