// A small typed fetch wrapper: same-origin cookie auth, JSON in and out, problem details as ApiError.

import { ApiError, parseProblem } from './errors';

export const API_BASE = '/api/v1';

export interface Page<T> {
  items: T[];
  next_cursor: string | null;
}

type Query = Record<string, string | number | boolean | null | undefined>;

export interface RequestOptions {
  query?: Query;
  body?: unknown;
  headers?: Record<string, string>;
  signal?: AbortSignal;
}

let onUnauthorized: (() => void) | null = null;
/** Called on every 401 (the session ended): the app goes back to the login screen. */
export function setUnauthorizedHandler(fn: (() => void) | null): void {
  onUnauthorized = fn;
}

export function buildUrl(path: string, query?: Query): string {
  const url = `${API_BASE}${path}`;
  if (!query) return url;
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) {
    if (v !== undefined && v !== null && v !== '') params.set(k, String(v));
  }
  const qs = params.toString();
  return qs ? `${url}?${qs}` : url;
}

export async function request<T>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
  const headers: Record<string, string> = { Accept: 'application/json, application/problem+json', ...opts.headers };
  let body: string | undefined;
  if (opts.body !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(opts.body);
  }
  let res: Response;
  try {
    res = await fetch(buildUrl(path, opts.query), { method, headers, body, credentials: 'include', signal: opts.signal });
  } catch (e) {
    if ((e as Error).name === 'AbortError') throw e;
    throw new ApiError({ type: 'about:blank', title: 'Network error', status: 0, detail: 'the server cannot be reached' });
  }
  const text = await res.text();
  if (!res.ok) {
    const problem = parseProblem(res.status, res.statusText, text, res.headers.get('content-type'));
    const ra = res.headers.get('retry-after');
    if (res.status === 401 && onUnauthorized) onUnauthorized();
    throw new ApiError(problem, ra ? Number(ra) : null);
  }
  if (!text) return undefined as T;
  return JSON.parse(text) as T;
}

export const api = {
  get: <T>(path: string, query?: Query, signal?: AbortSignal) => request<T>('GET', path, { query, signal }),
  post: <T>(path: string, body?: unknown, headers?: Record<string, string>) => request<T>('POST', path, { body, headers }),
  put: <T>(path: string, body?: unknown) => request<T>('PUT', path, { body }),
  patch: <T>(path: string, body?: unknown) => request<T>('PATCH', path, { body }),
  del: <T = void>(path: string) => request<T>('DELETE', path),
};

/** Fetches one page after another, following `next_cursor` until it is null (or `maxPages` pages). */
export async function fetchAllPages<T>(
  getPage: (cursor: string | null) => Promise<Page<T>>,
  maxPages = 50,
): Promise<T[]> {
  const out: T[] = [];
  let cursor: string | null = null;
  for (let i = 0; i < maxPages; i++) {
    const page: Page<T> = await getPage(cursor);
    out.push(...page.items);
    if (!page.next_cursor || page.next_cursor === cursor) break;
    cursor = page.next_cursor;
  }
  return out;
}

/** Page loader for a list route: `listPage('/agents')(cursor)`. */
export function listPage<T>(path: string, limit = 50, extra?: Query) {
  return (cursor: string | null) => api.get<Page<T>>(path, { ...extra, cursor, limit });
}
