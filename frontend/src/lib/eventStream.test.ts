import { describe, expect, it } from 'vitest';
import { ExecutionStream, type SocketLike } from './eventStream';
import { initialRunState, type RunState } from './runEvents';

class FakeSocket implements SocketLike {
  onopen: SocketLike['onopen'] = null;
  onmessage: SocketLike['onmessage'] = null;
  onclose: SocketLike['onclose'] = null;
  onerror: SocketLike['onerror'] = null;
  closed = false;
  constructor(public url: string) {}
  open() { this.onopen?.({}); }
  send(events: object[] | object) { this.onmessage?.({ data: JSON.stringify(events) }); }
  drop(code = 1006) { this.onclose?.({ code }); }
  close() { this.closed = true; }
}

const e = (seq: number, kind: string, node_id: string | null = null, data: object = {}) => ({ execution_id: 'ex1', seq, kind, at: seq, node_id, data });

function harness() {
  const sockets: FakeSocket[] = [];
  const timers: Array<() => void> = [];
  const states: RunState[] = [];
  const statuses: string[] = [];
  const stream = new ExecutionStream({
    executionId: 'ex1',
    initial: initialRunState(['a', 'b']),
    baseUrl: 'ws://host',
    socketFactory: (url) => { const s = new FakeSocket(url); sockets.push(s); return s; },
    onState: (s) => states.push(s),
    onStatus: (s) => statuses.push(s),
    setTimer: (fn) => { timers.push(fn); return timers.length; },
    clearTimer: () => {},
  });
  return { stream, sockets, timers, states, statuses };
}

describe('ExecutionStream', () => {
  it('reconnects with last_seq and applies replayed events once', () => {
    const h = harness();
    h.stream.start();
    expect(h.sockets[0].url).toBe('ws://host/api/v1/ws/executions/ex1?last_seq=0');
    h.sockets[0].open();
    h.sockets[0].send(e(1, 'run.started'));
    h.sockets[0].send(e(2, 'node.started', 'a'));
    h.sockets[0].send(e(3, 'node.token', 'a', { token: 'Hi' }));
    h.sockets[0].drop();
    expect(h.statuses).toContain('reconnecting');
    expect(h.timers).toHaveLength(1);
    h.timers[0]();
    expect(h.sockets[1].url).toBe('ws://host/api/v1/ws/executions/ex1?last_seq=3');
    // The server replays from last_seq; an overlapping replay (seq 3 again) must not double the token.
    h.sockets[1].open();
    h.sockets[1].send([e(3, 'node.token', 'a', { token: 'Hi' }), e(4, 'node.token', 'a', { token: '!' })]);
    h.sockets[1].send(e(5, 'node.completed', 'a', { output: 'Hi!' }));
    h.sockets[1].send(e(6, 'node.completed', 'b', { output: 2 }));
    h.sockets[1].send(e(7, 'run.completed', null, { outputs: { b: 2 } }));
    const s = h.stream.current;
    expect(s.nodes.a.tokens).toBe('Hi!');
    expect(s.nodes.a.status).toBe('completed');
    expect(s.status).toBe('completed');
    // The server closes after the run ends: no reconnect.
    h.sockets[1].drop(1000);
    expect(h.timers).toHaveLength(1);
    expect(h.statuses.at(-1)).toBe('closed');
  });

  it('asks again from the last contiguous seq after a gap', () => {
    const h = harness();
    h.stream.start();
    h.sockets[0].send(e(1, 'run.started'));
    h.sockets[0].send(e(3, 'node.started', 'b')); // seq 2 lost
    h.sockets[0].drop();
    h.timers[0]();
    expect(h.sockets[1].url).toContain('last_seq=1');
    h.sockets[1].send([e(2, 'node.started', 'a'), e(3, 'node.started', 'b')]);
    expect(h.stream.current.lastContiguousSeq).toBe(3);
    expect(h.stream.current.nodes.a.status).toBe('running');
  });

  it('reconnects even when the run ended but events are missing', () => {
    const h = harness();
    h.stream.start();
    h.sockets[0].send(e(1, 'run.started'));
    h.sockets[0].send(e(3, 'run.completed'));
    h.sockets[0].drop(1000);
    expect(h.timers).toHaveLength(1);
  });

  it('does not reconnect when the server refuses (auth, not found) or after stop()', () => {
    const h = harness();
    h.stream.start();
    h.sockets[0].drop(4401);
    expect(h.timers).toHaveLength(0);
    const h2 = harness();
    h2.stream.start();
    h2.stream.stop();
    expect(h2.sockets[0].closed).toBe(true);
    expect(h2.timers).toHaveLength(0);
  });

  it('backs off more after each failed attempt', () => {
    const delays: number[] = [];
    const sockets: FakeSocket[] = [];
    const timers: Array<() => void> = [];
    const stream = new ExecutionStream({
      executionId: 'x', initial: initialRunState(), baseUrl: 'ws://h',
      socketFactory: (u) => { const s = new FakeSocket(u); sockets.push(s); return s; },
      onState: () => {},
      setTimer: (fn, ms) => { delays.push(ms); timers.push(fn); return 0; },
      clearTimer: () => {},
    });
    stream.start();
    for (let i = 0; i < 3; i++) { sockets[i].drop(); timers[i](); }
    expect(delays).toEqual([250, 500, 1000]);
  });
});
