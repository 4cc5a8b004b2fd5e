// The execution WebSocket, reconnecting with `last_seq` so no event is lost and none is applied twice.

import { isTerminalRun, parseEvent, type ExecutionEvent, type RunState, applyEvent } from './runEvents';

/** The part of the browser's WebSocket this uses (a fake one stands in for it in the tests). */
export interface SocketLike {
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason?: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  close(code?: number, reason?: string): void;
}

export type SocketFactory = (url: string) => SocketLike;

export type ConnectionStatus = 'connecting' | 'open' | 'reconnecting' | 'closed';

export interface StreamOptions {
  executionId: string;
  initial: RunState;
  onState: (state: RunState) => void;
  onStatus?: (status: ConnectionStatus, detail?: string) => void;
  socketFactory?: SocketFactory;
  /** ws(s)://host — defaults to the page's origin. */
  baseUrl?: string;
  /** Delay before reconnect attempt n (1-based). */
  backoff?: (attempt: number) => number;
  setTimer?: (fn: () => void, ms: number) => unknown;
  clearTimer?: (t: unknown) => void;
  maxReconnects?: number;
}

/** Close codes after which reconnecting is pointless (auth refused, not found, policy). */
const FATAL_CODES = new Set([1008, 4001, 4003, 4004, 4401, 4403, 4404]);

export function executionSocketUrl(base: string, executionId: string, lastSeq: number): string {
  return `${base}/api/v1/ws/executions/${encodeURIComponent(executionId)}?last_seq=${lastSeq}`;
}

export function defaultBase(): string {
  const loc = globalThis.location;
  return `${loc.protocol === 'https:' ? 'wss:' : 'ws:'}//${loc.host}`;
}

export class ExecutionStream {
  private state: RunState;
  private socket: SocketLike | null = null;
  private timer: unknown = null;
  private stopped = false;
  private failures = 0;
  private readonly opts: Required<Pick<StreamOptions, 'backoff' | 'setTimer' | 'clearTimer' | 'maxReconnects'>> & StreamOptions;

  constructor(opts: StreamOptions) {
    this.opts = {
      backoff: (n) => Math.min(10_000, 250 * 2 ** (n - 1)),
      setTimer: (fn, ms) => setTimeout(fn, ms),
      clearTimer: (t) => clearTimeout(t as ReturnType<typeof setTimeout>),
      maxReconnects: 30,
      ...opts,
    };
    this.state = opts.initial;
  }

  get current(): RunState {
    return this.state;
  }

  start(): void {
    this.stopped = false;
    this.connect();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer !== null) this.opts.clearTimer(this.timer);
    this.timer = null;
    const s = this.socket;
    this.socket = null;
    if (s) {
      s.onclose = null;
      s.onmessage = null;
      s.close(1000, 'done');
    }
    this.opts.onStatus?.('closed');
  }

  /** Applies events that came another way (e.g. GET /executions/{id}/logs); duplicates are ignored. */
  ingest(events: ExecutionEvent[]): void {
    let s = this.state;
    for (const ev of [...events].sort((a, b) => a.seq - b.seq)) s = applyEvent(s, ev);
    this.update(s);
  }

  private update(s: RunState) {
    if (s === this.state) return;
    this.state = s;
    this.opts.onState(s);
  }

  private connect() {
    if (this.stopped) return;
    const factory = this.opts.socketFactory ?? ((url: string) => new WebSocket(url) as unknown as SocketLike);
    const url = executionSocketUrl(this.opts.baseUrl ?? defaultBase(), this.opts.executionId, this.state.lastContiguousSeq);
    this.opts.onStatus?.(this.failures ? 'reconnecting' : 'connecting');
    const sock = factory(url);
    this.socket = sock;
    sock.onopen = () => {
      this.opts.onStatus?.('open');
    };
    sock.onmessage = (msg) => {
      const payload = typeof msg.data === 'string' ? safeJson(msg.data) : msg.data;
      const list = Array.isArray(payload) ? payload : [payload];
      let s = this.state;
      for (const item of list) {
        const ev = parseEvent(item);
        if (ev) s = applyEvent(s, ev);
      }
      if (s !== this.state) this.failures = 0; // progress: the next drop starts the backoff again
      this.update(s);
    };
    sock.onerror = () => {
      /* onclose follows */
    };
    sock.onclose = (ev) => {
      if (this.socket !== sock) return;
      this.socket = null;
      if (this.stopped) return;
      if (isTerminalRun(this.state.status) && this.state.lastContiguousSeq >= this.state.maxSeq) {
        this.opts.onStatus?.('closed', 'run finished');
        this.stopped = true;
        return;
      }
      if (FATAL_CODES.has(ev.code)) {
        this.opts.onStatus?.('closed', ev.reason || `closed by the server (${ev.code})`);
        this.stopped = true;
        return;
      }
      this.failures++;
      if (this.failures > this.opts.maxReconnects) {
        this.opts.onStatus?.('closed', 'gave up reconnecting');
        this.stopped = true;
        return;
      }
      this.opts.onStatus?.('reconnecting', `connection lost (${ev.code}); retrying`);
      this.timer = this.opts.setTimer(() => {
        this.timer = null;
        this.connect();
      }, this.opts.backoff(this.failures));
    };
  }
}

function safeJson(s: string): unknown {
  try {
    return JSON.parse(s);
  } catch {
    return null;
  }
}
