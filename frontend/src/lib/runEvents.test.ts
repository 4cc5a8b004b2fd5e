import { describe, expect, it } from 'vitest';
import { applyEvent, applyEvents, attemptTotals, initialRunState, parseEvent, type ExecutionEvent } from './runEvents';

let seq = 0;
const ev = (kind: string, node_id: string | null = null, data: Record<string, unknown> = {}, s?: number): ExecutionEvent =>
  ({ execution_id: 'x', seq: s ?? ++seq, kind, at: seq, node_id, data });

describe('run event reducer', () => {
  it('follows a run from start to completion', () => {
    seq = 0;
    const events = [
      ev('run.started', null, { inputs: { topic: 't' } }),
      ev('node.started', 'in', { attempt: 1 }),
      ev('node.completed', 'in', { attempt: 1, output: { topic: 't' } }),
      ev('node.started', 'a', { attempt: 1 }),
      ev('node.token', 'a', { token: 'Hel' }),
      ev('node.token', 'a', { token: 'lo' }),
      ev('llm.attempt', 'a', { provider: 'p1', outcome: 'rate_limited', input_tokens: 0, output_tokens: 0, cost: 0 }),
      ev('llm.attempt', 'a', { provider: 'scripted', outcome: 'success', input_tokens: 10, output_tokens: 5, cost: 0.002 }),
      ev('node.completed', 'a', { attempt: 1, output: 'Hello' }),
      ev('node.skipped', 'b'),
      ev('run.completed', null, { outputs: { out: 'Hello' } }),
    ];
    const s = applyEvents(initialRunState(['in', 'a', 'b', 'c']), events);
    expect(s.status).toBe('completed');
    expect(s.outputs).toEqual({ out: 'Hello' });
    expect(s.nodes.in.status).toBe('completed');
    expect(s.nodes.a).toMatchObject({ status: 'completed', output: 'Hello', tokens: 'Hello' });
    expect(s.nodes.b.status).toBe('skipped');
    expect(s.nodes.c.status).toBe('pending');
    const t = attemptTotals(s.nodes.a.attempts);
    expect(t).toMatchObject({ input: 10, output: 5, failures: 1, providers: ['p1', 'scripted'] });
    expect(t.cost).toBeCloseTo(0.002);
    expect(s.lastContiguousSeq).toBe(11);
  });

  it('ignores events it has already applied (same seq)', () => {
    seq = 0;
    const tok = ev('node.token', 'a', { token: 'x' });
    let s = initialRunState(['a']);
    s = applyEvent(s, tok);
    const again = applyEvent(s, tok);
    expect(again).toBe(s);
    expect(again.nodes.a.tokens).toBe('x');
  });

  it('tracks the last contiguous seq across gaps', () => {
    let s = initialRunState();
    s = applyEvent(s, ev('node.started', 'a', {}, 1));
    s = applyEvent(s, ev('node.token', 'a', { token: 'b' }, 3));
    expect(s.lastContiguousSeq).toBe(1);
    expect(s.maxSeq).toBe(3);
    s = applyEvent(s, ev('node.token', 'a', { token: 'a' }, 2));
    expect(s.lastContiguousSeq).toBe(3);
  });

  it('marks retries and failures with their error', () => {
    seq = 0;
    const s = applyEvents(initialRunState(), [
      ev('node.started', 'a', { attempt: 1 }),
      ev('node.retrying', 'a', { attempt: 1, error: 'timeout', delay: 0.5 }),
      ev('node.started', 'a', { attempt: 2 }),
      ev('node.failed', 'a', { attempt: 2, error: 'boom' }),
      ev('node.cancelled', 'b', { reason: 'run failed' }),
      ev('run.failed', null, { error: 'node a failed' }),
    ]);
    expect(s.nodes.a).toMatchObject({ status: 'failed', attempt: 2, error: 'boom' });
    expect(s.nodes.b.status).toBe('cancelled');
    expect(s).toMatchObject({ status: 'failed', error: 'node a failed' });
  });

  it('never steps a finished node back to running', () => {
    let s = initialRunState();
    s = applyEvent(s, ev('node.completed', 'a', { output: 1 }, 5));
    s = applyEvent(s, ev('node.started', 'a', {}, 4));
    expect(s.nodes.a.status).toBe('completed');
  });
});

describe('parseEvent', () => {
  it('reads JSON text and refuses what is not an event', () => {
    expect(parseEvent('{"execution_id":"e","seq":3,"kind":"node.started","at":1.5,"node_id":"a","data":{"attempt":1}}'))
      .toEqual({ execution_id: 'e', seq: 3, kind: 'node.started', at: 1.5, node_id: 'a', data: { attempt: 1 } });
    expect(parseEvent('nope')).toBeNull();
    expect(parseEvent({ kind: 'x' })).toBeNull();
  });
});
