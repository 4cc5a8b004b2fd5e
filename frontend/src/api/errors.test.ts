import { afterEach, describe, expect, it, vi } from 'vitest';
import { ApiError, errorLines, parseProblem } from './errors';
import { fetchAllPages, request, buildUrl } from './client';

describe('parseProblem', () => {
  it('reads RFC 7807 problem details with flow problems', () => {
    const body = JSON.stringify({ type: 'about:blank', title: 'Invalid flow', status: 422, detail: '1 problem(s) in the flow',
      errors: [{ code: 'cycle', where: 'flow', message: 'cycle a -> b -> a', nodes: ['a', 'b'], edge: null }] });
    const err = new ApiError(parseProblem(422, 'Unprocessable', body, 'application/problem+json'));
    expect(err.status).toBe(422);
    expect(err.flowProblems).toHaveLength(1);
    expect(err.fieldErrors).toHaveLength(0);
    expect(err.message).toBe('Invalid flow: 1 problem(s) in the flow (422)');
  });

  it('reads field errors of a request validation 422', () => {
    const body = JSON.stringify({ title: 'Unprocessable Content', status: 422, detail: 'the request is invalid', errors: [{ field: 'role', message: 'too short', source: 'body' }] });
    const err = new ApiError(parseProblem(422, '', body, 'application/problem+json'));
    expect(errorLines(err)).toEqual(['Unprocessable Content: the request is invalid (422)', 'role: too short']);
  });

  it('copes with bodies that are not problem details', () => {
    expect(parseProblem(502, 'Bad Gateway', '<html>oops</html>', 'text/html')).toEqual({ type: 'about:blank', title: 'Bad Gateway', status: 502, detail: '<html>oops</html>' });
    expect(parseProblem(500, '', '{not json', 'application/json').title).toBe('HTTP 500');
  });
});

describe('request', () => {
  afterEach(() => vi.unstubAllGlobals());

  it('sends cookies and JSON, and throws ApiError with Retry-After on a 429', async () => {
    const calls: Array<[string, RequestInit]> = [];
    vi.stubGlobal('fetch', async (url: string, init: RequestInit) => {
      calls.push([url, init]);
      return new Response(JSON.stringify({ type: 'about:blank', title: 'Too Many Requests', status: 429, detail: 'slow down' }),
        { status: 429, headers: { 'content-type': 'application/problem+json', 'retry-after': '7' } });
    });
    const err = await request('POST', '/agents', { body: { role: 'r' } }).catch((e) => e);
    expect(err).toMatchObject({ status: 429, retryAfter: 7 });
    expect(errorLines(err)).toEqual(['Too Many Requests: slow down (429)', 'try again in 7 s']);
    expect(calls[0][0]).toBe('/api/v1/agents');
    expect(calls[0][1].credentials).toBe('include');
    expect(calls[0][1].body).toBe('{"role":"r"}');
  });

  it('returns undefined for an empty 204', async () => {
    vi.stubGlobal('fetch', async () => new Response(null, { status: 204 }));
    await expect(request('DELETE', '/agents/x')).resolves.toBeUndefined();
  });

  it('builds query strings without empty values', () => {
    expect(buildUrl('/agents', { cursor: null, limit: 20, q: '' })).toBe('/api/v1/agents?limit=20');
  });
});

describe('fetchAllPages', () => {
  it('follows next_cursor until it is null', async () => {
    const pages: Record<string, { items: number[]; next_cursor: string | null }> = {
      start: { items: [1, 2], next_cursor: 'c1' },
      c1: { items: [3], next_cursor: 'c2' },
      c2: { items: [4], next_cursor: null },
    };
    const seen: Array<string | null> = [];
    const all = await fetchAllPages(async (c) => { seen.push(c); return pages[c ?? 'start']; });
    expect(all).toEqual([1, 2, 3, 4]);
    expect(seen).toEqual([null, 'c1', 'c2']);
  });
});
