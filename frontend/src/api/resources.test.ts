import { describe, expect, it } from 'vitest';
import { permissions } from './resources';

describe('permissions', () => {
  it('follows the seed matrix: viewers only read, members edit and run, admins also manage', () => {
    expect(permissions('viewer')).toEqual({ editAgents: false, editFlows: false, execute: false, admin: false });
    expect(permissions('member')).toEqual({ editAgents: true, editFlows: true, execute: true, admin: false });
    expect(permissions('admin')).toEqual({ editAgents: true, editFlows: true, execute: true, admin: true });
    expect(permissions(undefined).execute).toBe(false);
  });
});

describe('tools API', () => {
  it('sends build, rebuild, status and test to the tool routes', async () => {
    const { tools } = await import('./resources');
    const calls: Array<{ url: string; method: string; body: unknown }> = [];
    const orig = globalThis.fetch;
    globalThis.fetch = (async (url: string, init: RequestInit) => {
      calls.push({ url: String(url), method: init.method ?? 'GET', body: init.body ? JSON.parse(String(init.body)) : undefined });
      return new Response(JSON.stringify({ ok: true }), { status: 200, headers: { 'Content-Type': 'application/json' } });
    }) as typeof fetch;
    try {
      await tools.build('a b');
      await tools.rebuild('wc');
      await tools.status('wc', 20);
      await tools.test('wc', { text: 'x' });
    } finally {
      globalThis.fetch = orig;
    }
    expect(calls.map((c) => `${c.method} ${c.url.replace(/^.*\/api\/v1/, '')}`)).toEqual([
      'POST /tools/a%20b/build', 'POST /tools/wc/rebuild', 'GET /tools/wc/status?lines=20', 'POST /tools/wc/test',
    ]);
    expect(calls[3].body).toEqual({ input: { text: 'x' } });
  });
});
