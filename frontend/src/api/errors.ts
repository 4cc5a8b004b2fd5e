// RFC 7807 problem details as the API sends them, and how the canvas reads them.

export interface FlowProblem {
  code: string;
  where: string;
  message: string;
  nodes: string[];
  edge: [string, string] | null;
}

export interface FieldError {
  field?: string | null;
  message?: string | null;
  source?: string | null;
}

export interface ProblemDetails {
  type: string;
  title: string;
  status: number;
  detail?: string;
  errors?: Array<FlowProblem | FieldError>;
  [key: string]: unknown;
}

/** Every non-2xx answer of the API, with its problem details (or a stand-in when the body was not one). */
export class ApiError extends Error {
  readonly status: number;
  readonly problem: ProblemDetails;
  readonly retryAfter: number | null;

  constructor(problem: ProblemDetails, retryAfter: number | null = null) {
    super(describeProblem(problem));
    this.name = 'ApiError';
    this.status = problem.status;
    this.problem = problem;
    this.retryAfter = retryAfter;
  }

  /** The flow problems of a 422 "Invalid flow" (each names its nodes or edge), else []. */
  get flowProblems(): FlowProblem[] {
    return (this.problem.errors ?? []).filter(isFlowProblem);
  }

  /** Per-field messages of a request validation 422, else []. */
  get fieldErrors(): FieldError[] {
    return (this.problem.errors ?? []).filter((e) => !isFlowProblem(e)) as FieldError[];
  }
}

export function isFlowProblem(e: unknown): e is FlowProblem {
  return !!e && typeof e === 'object' && 'code' in e && 'where' in e && 'message' in e;
}

/** One line a person can read: "Conflict: flow 'x' changed (409)". */
export function describeProblem(p: ProblemDetails): string {
  const head = p.detail && p.detail !== p.title ? `${p.title}: ${p.detail}` : p.title;
  return `${head} (${p.status})`;
}

/** Turns a response body (already read as text) into problem details, whatever the server sent. */
export function parseProblem(status: number, statusText: string, body: string, contentType: string | null): ProblemDetails {
  if (body && (contentType ?? '').includes('json')) {
    try {
      const data = JSON.parse(body) as Partial<ProblemDetails>;
      if (data && typeof data === 'object') {
        return {
          ...data,
          type: typeof data.type === 'string' ? data.type : 'about:blank',
          title: typeof data.title === 'string' ? data.title : statusText || `HTTP ${status}`,
          status: typeof data.status === 'number' ? data.status : status,
          detail: typeof data.detail === 'string' ? data.detail : undefined,
          errors: Array.isArray(data.errors) ? data.errors : undefined,
        };
      }
    } catch {
      /* fall through: not JSON after all */
    }
  }
  const text = body.trim().slice(0, 300);
  return { type: 'about:blank', title: statusText || `HTTP ${status}`, status, detail: text || undefined };
}

/** Messages for a form: field errors first ("role: too short"), else the problem line. */
export function errorLines(err: unknown): string[] {
  if (err instanceof ApiError) {
    const lines: string[] = [];
    for (const f of err.fieldErrors) {
      if (f.message) lines.push(f.field ? `${f.field}: ${f.message}` : f.message);
    }
    for (const p of err.flowProblems) lines.push(`${p.where}: ${p.message}`);
    if (err.status === 429 && err.retryAfter) lines.push(`try again in ${err.retryAfter} s`);
    return lines.length ? [err.message, ...lines] : [err.message];
  }
  if (err instanceof Error) return [err.message];
  return [String(err)];
}
