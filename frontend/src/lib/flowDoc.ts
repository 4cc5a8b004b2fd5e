// The flow document (docs/flow-format.md) and its conversion to and from React Flow's nodes and edges.
// Everything the canvas does not draw (agents, crews, tools, inputs, name, limits…) rides along untouched.

export type NodeKind = 'input' | 'agent' | 'crew' | 'tool' | 'router' | 'output';
export const NODE_KINDS: NodeKind[] = ['input', 'agent', 'crew', 'tool', 'router', 'output'];

export interface Route {
  when: string;
  to: string;
}

export interface FlowNodeDoc {
  id: string;
  kind: NodeKind;
  label?: string;
  agent?: string | null;
  crew?: string | null;
  tool?: string | null;
  task?: string;
  expected_output?: string;
  inputs?: Record<string, string>;
  routes?: Route[];
  default?: string | null;
  value?: string | null;
  retry?: Record<string, number>;
  timeout?: number | null;
  position?: [number, number] | { x: number; y: number } | null;
}

export type EdgeDoc = { from: string; to: string } | [string, string] | string;

export interface FlowDocument {
  id?: string;
  name?: string;
  description?: string;
  version?: number;
  max_parallel?: number;
  timeout?: number | null;
  inputs?: unknown;
  agents?: Record<string, unknown>;
  crews?: Record<string, unknown>;
  tools?: Record<string, unknown>;
  nodes: FlowNodeDoc[];
  edges: EdgeDoc[];
  [key: string]: unknown;
}

/** What a canvas node carries: the node's document minus `id` and `position` (React Flow holds those). */
export type NodeBody = Omit<FlowNodeDoc, 'id' | 'position'>;

export interface CanvasNode {
  id: string;
  type: 'crewflow';
  position: { x: number; y: number };
  data: { body: NodeBody };
  selected?: boolean;
}

export interface CanvasEdge {
  id: string;
  source: string;
  target: string;
  selected?: boolean;
}

export interface Canvas {
  /** The rest of the document, unchanged by drawing. */
  meta: Omit<FlowDocument, 'nodes' | 'edges'>;
  nodes: CanvasNode[];
  edges: CanvasEdge[];
}

export const edgeId = (source: string, target: string) => `${source}->${target}`;

/** `"a -> b"`, `[a, b]` and `{from, to}` (or `{source, target}`) all become `{from, to}`; anything else is null. */
export function normalizeEdge(e: unknown): { from: string; to: string } | null {
  if (typeof e === 'string') {
    const parts = e.split('->').map((p) => p.trim());
    return parts.length === 2 && parts[0] && parts[1] ? { from: parts[0], to: parts[1] } : null;
  }
  if (Array.isArray(e)) {
    return e.length === 2 && typeof e[0] === 'string' && typeof e[1] === 'string' ? { from: e[0], to: e[1] } : null;
  }
  if (e && typeof e === 'object') {
    const o = e as Record<string, unknown>;
    const from = o.from ?? o.source;
    const to = o.to ?? o.target;
    if (typeof from === 'string' && typeof to === 'string') return { from, to };
  }
  return null;
}

function readPosition(p: FlowNodeDoc['position']): { x: number; y: number } | null {
  if (Array.isArray(p) && p.length === 2 && p.every((v) => typeof v === 'number' && Number.isFinite(v))) {
    return { x: p[0], y: p[1] };
  }
  if (p && !Array.isArray(p) && typeof p.x === 'number' && typeof p.y === 'number') return { x: p.x, y: p.y };
  return null;
}

/** Document → canvas. Nodes without a position are laid out by `layout` (layered, left to right). */
export function docToCanvas(doc: FlowDocument): Canvas {
  const { nodes: docNodes = [], edges: docEdges = [], ...meta } = doc;
  const edges: CanvasEdge[] = [];
  const seen = new Set<string>();
  for (const raw of docEdges) {
    const e = normalizeEdge(raw);
    if (!e) continue;
    const id = edgeId(e.from, e.to);
    if (seen.has(id)) continue;
    seen.add(id);
    edges.push({ id, source: e.from, target: e.to });
  }
  const missing: string[] = [];
  const nodes: CanvasNode[] = docNodes.map((n) => {
    const { id, position, ...body } = n;
    const pos = readPosition(position);
    if (!pos) missing.push(id);
    return { id, type: 'crewflow', position: pos ?? { x: 0, y: 0 }, data: { body: clean(body) } };
  });
  if (missing.length) {
    const laid = layeredLayout(nodes.map((n) => n.id), edges);
    const only = new Set(missing);
    for (const n of nodes) if (only.has(n.id)) n.position = laid[n.id];
  }
  return { meta, nodes, edges };
}

/** Canvas → document: positions rounded into `position: [x, y]`, edges as `{from, to}`. */
export function canvasToDoc(canvas: Pick<Canvas, 'meta' | 'nodes' | 'edges'>): FlowDocument {
  const nodes: FlowNodeDoc[] = canvas.nodes.map((n) => ({
    id: n.id,
    ...clean(n.data.body),
    position: [Math.round(n.position.x), Math.round(n.position.y)],
  }));
  const edges = canvas.edges.map((e) => ({ from: e.source, to: e.target }));
  return { ...canvas.meta, nodes, edges };
}

/** Drops undefined, empty-string optional fields and empty collections, so saved documents stay tidy. */
function clean(body: NodeBody): NodeBody {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(body)) {
    if (v === undefined) continue;
    if (v === '' && k !== 'task') continue;
    if (Array.isArray(v) && v.length === 0 && k !== 'routes') continue;
    if (v && typeof v === 'object' && !Array.isArray(v) && Object.keys(v).length === 0) continue;
    out[k] = v;
  }
  return out as unknown as NodeBody;
}

/** A fresh node of `kind` with sensible defaults for its fields. */
export function newNodeBody(kind: NodeKind): NodeBody {
  switch (kind) {
    case 'agent':
      return { kind, agent: null, task: '' };
    case 'crew':
      return { kind, crew: null, inputs: {} };
    case 'tool':
      return { kind, tool: null, inputs: {} };
    case 'router':
      return { kind, routes: [], default: null };
    case 'output':
      return { kind };
    default:
      return { kind };
  }
}

const ID_RE = /^[A-Za-z_][A-Za-z0-9_-]{0,63}$/;
export const isValidNodeId = (id: string) => ID_RE.test(id);

/** The first free id like `agent`, `agent_2`, `agent_3`… */
export function freshId(base: string, taken: Iterable<string>): string {
  const used = new Set(taken);
  const stem = base.replace(/[^A-Za-z0-9_-]/g, '_').replace(/^([^A-Za-z_])/, '_$1') || 'node';
  if (!used.has(stem)) return stem;
  for (let i = 2; ; i++) if (!used.has(`${stem}_${i}`)) return `${stem}_${i}`;
}

/** Renames a node everywhere the canvas knows it: edges, router routes and defaults, templates. */
export function renameNode(canvas: Pick<Canvas, 'nodes' | 'edges'>, from: string, to: string): Pick<Canvas, 'nodes' | 'edges'> {
  const tpl = new RegExp(`(\\{\\{\\s*nodes\\.)${from.replace(/[-]/g, '\\-')}(?=[.\\s}])`, 'g');
  const fixText = (s: unknown) => (typeof s === 'string' ? s.replace(tpl, `$1${to}`) : s);
  const nodes = canvas.nodes.map((n) => {
    const b = { ...n.data.body };
    if (b.routes) b.routes = b.routes.map((r) => ({ when: r.when.replace(new RegExp(`\\bnodes\\.${from}\\b`, 'g'), `nodes.${to}`), to: r.to === from ? to : r.to }));
    if (b.default === from) b.default = to;
    for (const k of ['task', 'expected_output', 'value'] as const) if (b[k] != null) (b as Record<string, unknown>)[k] = fixText(b[k]);
    if (b.inputs) b.inputs = Object.fromEntries(Object.entries(b.inputs).map(([k, v]) => [k, fixText(v) as string]));
    return { ...n, id: n.id === from ? to : n.id, data: { body: b } };
  });
  const edges = canvas.edges.map((e) => {
    const source = e.source === from ? to : e.source;
    const target = e.target === from ? to : e.target;
    return { ...e, id: edgeId(source, target), source, target };
  });
  return { nodes, edges };
}

/**
 * A simple layered layout: each node's layer is its longest path from a root; layers go left to right,
 * nodes in a layer top to bottom ordered by the mean position of their parents (one barycentre pass).
 * Cycles are tolerated (back edges are ignored).
 */
export function layeredLayout(
  ids: string[],
  edges: Array<{ source: string; target: string }>,
  gapX = 260,
  gapY = 130,
): Record<string, { x: number; y: number }> {
  const known = new Set(ids);
  const parents = new Map<string, string[]>(ids.map((id) => [id, []]));
  const children = new Map<string, string[]>(ids.map((id) => [id, []]));
  const all = new Map<string, string[]>(ids.map((id) => [id, []]));
  const hasParent = new Set<string>();
  for (const e of edges) {
    if (!known.has(e.source) || !known.has(e.target) || e.source === e.target) continue;
    all.get(e.source)!.push(e.target);
    hasParent.add(e.target);
  }
  // Drop back edges (found by a DFS from the roots first) so cycles do not stretch the layout.
  const state = new Map<string, number>();
  const dfs = (id: string) => {
    state.set(id, 1);
    for (const c of all.get(id)!) {
      const s = state.get(c) ?? 0;
      if (s === 1) continue; // back edge
      parents.get(c)!.push(id);
      children.get(id)!.push(c);
      if (s === 0) dfs(c);
    }
    state.set(id, 2);
  };
  for (const id of [...ids.filter((i) => !hasParent.has(i)), ...ids]) if (!state.has(id)) dfs(id);
  const layer = new Map<string, number>();
  const visiting = new Set<string>();
  const depth = (id: string): number => {
    if (layer.has(id)) return layer.get(id)!;
    if (visiting.has(id)) return 0; // a back edge: ignore it
    visiting.add(id);
    let d = 0;
    for (const p of parents.get(id)!) d = Math.max(d, depth(p) + 1);
    visiting.delete(id);
    layer.set(id, d);
    return d;
  };
  ids.forEach(depth);
  const layers: string[][] = [];
  for (const id of ids) (layers[layer.get(id)!] ??= []).push(id);
  const rowOf = new Map<string, number>();
  const out: Record<string, { x: number; y: number }> = {};
  layers.forEach((members, li) => {
    if (!members) return;
    const keyed = members.map((id, i) => {
      const ps = parents.get(id)!.filter((p) => rowOf.has(p));
      const bary = ps.length ? ps.reduce((s, p) => s + rowOf.get(p)!, 0) / ps.length : i;
      return { id, bary, i };
    });
    keyed.sort((a, b) => a.bary - b.bary || a.i - b.i);
    const offset = (keyed.length - 1) / 2;
    keyed.forEach(({ id }, row) => {
      rowOf.set(id, row - offset);
      out[id] = { x: li * gapX, y: (row - offset) * gapY };
    });
  });
  return out;
}

export interface InputSpec {
  name: string;
  description?: string;
  default?: unknown;
  required?: boolean;
}

/** The flow's declared inputs, from either spelling: a mapping name → spec, or a list of names or specs. */
export function inputSpecs(inputs: unknown): InputSpec[] {
  if (Array.isArray(inputs)) {
    return inputs.flatMap((i): InputSpec[] => {
      if (typeof i === 'string') return [{ name: i }];
      if (i && typeof i === 'object' && typeof (i as InputSpec).name === 'string') return [{ ...(i as InputSpec) }];
      return [];
    });
  }
  if (inputs && typeof inputs === 'object') {
    return Object.entries(inputs as Record<string, unknown>).map(([name, spec]) =>
      spec && typeof spec === 'object' ? { name, ...(spec as Omit<InputSpec, 'name'>) } : { name, default: spec ?? undefined },
    );
  }
  return [];
}

/** Run inputs from the form's text values: JSON where it parses as an object/array/number/bool, else the text. */
export function runInputs(specs: InputSpec[], values: Record<string, string>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const s of specs) {
    const raw = values[s.name];
    if (raw === undefined || raw === '') continue;
    out[s.name] = typeof s.default === 'string' ? raw : parseLoose(raw);
  }
  return out;
}

function parseLoose(raw: string): unknown {
  const t = raw.trim();
  if (/^(\{|\[|-?\d|true$|false$|null$)/.test(t)) {
    try {
      return JSON.parse(t);
    } catch {
      /* keep the text */
    }
  }
  return raw;
}
