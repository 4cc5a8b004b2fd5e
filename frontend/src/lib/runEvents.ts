// The live run state, folded from execution events. Events are numbered per execution (`seq`); a replay
// after a reconnect may repeat some, and the reducer ignores any `seq` it has already applied.

export type EventKind =
  | 'run.started' | 'run.completed' | 'run.failed' | 'run.cancelled'
  | 'node.started' | 'node.completed' | 'node.failed' | 'node.retrying' | 'node.skipped' | 'node.cancelled'
  | 'node.token' | 'node.log' | 'llm.attempt';

export interface ExecutionEvent {
  execution_id: string;
  seq: number;
  kind: EventKind | string;
  at: number;
  node_id: string | null;
  data: Record<string, unknown>;
}

export type NodeStatus = 'pending' | 'running' | 'retrying' | 'completed' | 'failed' | 'skipped' | 'cancelled';
export type RunStatus = 'pending' | 'running' | 'completed' | 'failed' | 'cancelled';

export interface LlmAttempt {
  provider: string;
  model?: string;
  outcome: string;
  latency_ms?: number;
  input_tokens: number;
  output_tokens: number;
  cost: number;
  error?: string | null;
  agent?: string;
}

export interface NodeRun {
  status: NodeStatus;
  attempt: number;
  output?: unknown;
  error?: string;
  tokens: string;
  attempts: LlmAttempt[];
  logs: Array<Record<string, unknown>>;
  startedAt?: number;
  finishedAt?: number;
}

export interface RunState {
  status: RunStatus;
  nodes: Record<string, NodeRun>;
  outputs?: unknown;
  error?: string;
  /** Every seq applied so far. */
  seen: Set<number>;
  /** The highest n such that every seq 1..n was applied: what a reconnect sends as `last_seq`. */
  lastContiguousSeq: number;
  /** The highest seq applied. */
  maxSeq: number;
}

export function initialRunState(nodeIds: string[] = []): RunState {
  const nodes: Record<string, NodeRun> = {};
  for (const id of nodeIds) nodes[id] = emptyNode();
  return { status: 'pending', nodes, seen: new Set(), lastContiguousSeq: 0, maxSeq: 0 };
}

const emptyNode = (): NodeRun => ({ status: 'pending', attempt: 0, tokens: '', attempts: [] , logs: [] });

const MAX_TOKEN_CHARS = 200_000;
const MAX_LOGS = 500;

export const isTerminalRun = (s: RunStatus) => s === 'completed' || s === 'failed' || s === 'cancelled';

/** Applies one event; returns the same state object when the event was already applied. */
export function applyEvent(state: RunState, ev: ExecutionEvent): RunState {
  if (!Number.isFinite(ev.seq) || state.seen.has(ev.seq)) return state;
  const seen = new Set(state.seen);
  seen.add(ev.seq);
  let contiguous = state.lastContiguousSeq;
  while (seen.has(contiguous + 1)) contiguous++;
  const next: RunState = { ...state, seen, lastContiguousSeq: contiguous, maxSeq: Math.max(state.maxSeq, ev.seq) };
  const d = ev.data ?? {};
  const nodeId = ev.node_id ?? undefined;
  const node = (): NodeRun => {
    const cur = next.nodes[nodeId!] ?? emptyNode();
    const copy = { ...cur };
    next.nodes = { ...next.nodes, [nodeId!]: copy };
    return copy;
  };
  switch (ev.kind) {
    case 'run.started':
      if (!isTerminalRun(next.status)) next.status = 'running';
      break;
    case 'run.completed':
      next.status = 'completed';
      next.outputs = d.outputs;
      break;
    case 'run.failed':
      next.status = 'failed';
      next.error = typeof d.error === 'string' ? d.error : JSON.stringify(d.error ?? null);
      break;
    case 'run.cancelled':
      next.status = 'cancelled';
      next.error = typeof d.reason === 'string' ? d.reason : undefined;
      break;
    default:
      if (!nodeId) break;
      applyNodeEvent(node, ev, d);
  }
  if (next.status === 'pending' && ev.kind.startsWith('node.')) next.status = 'running';
  return next;
}

function applyNodeEvent(node: () => NodeRun, ev: ExecutionEvent, d: Record<string, unknown>) {
  const n = node();
  const attempt = typeof d.attempt === 'number' ? d.attempt : n.attempt;
  switch (ev.kind) {
    case 'node.started':
      // A later event (completed/failed) may have arrived first out of order: never step back from it.
      if (!isFinal(n.status)) {
        n.status = 'running';
        n.attempt = attempt;
        n.startedAt = n.startedAt ?? ev.at;
      }
      break;
    case 'node.retrying':
      if (!isFinal(n.status)) n.status = 'retrying';
      n.attempt = attempt;
      n.error = str(d.error);
      break;
    case 'node.completed':
      n.status = 'completed';
      n.attempt = attempt;
      n.output = d.output;
      n.error = undefined;
      n.finishedAt = ev.at;
      break;
    case 'node.failed':
      n.status = 'failed';
      n.attempt = attempt;
      n.error = str(d.error);
      n.finishedAt = ev.at;
      break;
    case 'node.skipped':
      n.status = 'skipped';
      break;
    case 'node.cancelled':
      if (n.status !== 'completed' && n.status !== 'failed') n.status = 'cancelled';
      n.error = str(d.reason);
      break;
    case 'node.token':
      if (typeof d.token === 'string' && n.tokens.length < MAX_TOKEN_CHARS) n.tokens = n.tokens + d.token;
      break;
    case 'llm.attempt':
      n.attempts = [...n.attempts, {
        provider: String(d.provider ?? '?'),
        model: d.model === undefined ? undefined : String(d.model),
        outcome: String(d.outcome ?? '?'),
        latency_ms: num(d.latency_ms),
        input_tokens: num(d.input_tokens) ?? 0,
        output_tokens: num(d.output_tokens) ?? 0,
        cost: num(d.cost) ?? 0,
        error: d.error == null ? null : String(d.error),
        agent: d.agent == null ? undefined : String(d.agent),
      }];
      break;
    case 'node.log':
      if (n.logs.length < MAX_LOGS) n.logs = [...n.logs, d];
      break;
  }
}

const isFinal = (s: NodeStatus) => s === 'completed' || s === 'failed' || s === 'skipped' || s === 'cancelled';
const str = (v: unknown) => (v == null ? undefined : typeof v === 'string' ? v : JSON.stringify(v));
const num = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) ? v : undefined);

/** Applies a batch of events (any order; duplicates ignored). */
export function applyEvents(state: RunState, events: ExecutionEvent[]): RunState {
  return [...events].sort((a, b) => a.seq - b.seq).reduce(applyEvent, state);
}

/** Totals over a node's LLM attempts: tokens, cost, failovers (attempts that were not a success). */
export function attemptTotals(attempts: LlmAttempt[]) {
  let input = 0, output = 0, cost = 0, failures = 0;
  for (const a of attempts) {
    input += a.input_tokens;
    output += a.output_tokens;
    cost += a.cost;
    if (a.outcome !== 'success' && a.outcome !== 'cache_hit') failures++;
  }
  return { input, output, cost, failures, providers: [...new Set(attempts.map((a) => a.provider))] };
}

/** Parses one WebSocket message into an event, or null when it is not one. */
export function parseEvent(raw: unknown): ExecutionEvent | null {
  let v: unknown = raw;
  if (typeof raw === 'string') {
    try {
      v = JSON.parse(raw);
    } catch {
      return null;
    }
  }
  if (!v || typeof v !== 'object') return null;
  const o = v as Record<string, unknown>;
  if (typeof o.seq !== 'number' || typeof o.kind !== 'string') return null;
  return {
    execution_id: String(o.execution_id ?? ''),
    seq: o.seq,
    kind: o.kind,
    at: typeof o.at === 'number' ? o.at : 0,
    node_id: typeof o.node_id === 'string' ? o.node_id : null,
    data: o.data && typeof o.data === 'object' ? (o.data as Record<string, unknown>) : {},
  };
}
