// The API's resources, typed after src/crewflow/entrypoints/http/*.py.

import { api, fetchAllPages, listPage, type Page } from './client';
import type { FlowProblem } from './errors';
import type { FlowDocument } from '../lib/flowDoc';
import type { ExecutionEvent } from '../lib/runEvents';

export type Role = 'admin' | 'member' | 'viewer';

export interface UserOut { id: string; email: string; role: Role; is_active: boolean }
export interface TenantOut { id: string; slug: string; name: string }
export interface Me { user: UserOut; tenant: TenantOut }
export interface TokenOut { access_token: string; token_type: string; expires_at: number; user: UserOut; tenant_id: string }

export interface Agent {
  id: string;
  role: string;
  goal: string;
  backstory: string;
  provider: string | null;
  model: string | null;
  tools: string[];
  allow_delegation: boolean;
  max_iter: number;
  temperature: number | null;
  cache: boolean;
}
export type AgentIn = Partial<Agent> & { role: string; goal: string };

export interface Crew { id: string; agents: string[]; tasks: Array<{ name: string; description: string; expected_output: string; agent: string | null; context: string[] }>; process: string; description: string; manager_provider: string | null }

export interface FlowSummary { id: string; name: string; description: string; current_version: number; is_active: boolean; created_at: number; updated_at: number }
export interface FlowOut extends FlowSummary { definition: FlowDocument }
export interface FlowVersionOut { flow_id: string; version: number; created_at: number; created_by: string | null; definition: FlowDocument }
export interface ValidationOut { valid: boolean; problems: FlowProblem[] }

export interface ExecutionSummary { id: string; flow_id: string; flow_version: number; status: string; created_at: number; started_at: number | null; finished_at: number | null; error: string | null }
export interface NodeRunOut { node_id: string; status: string; attempts: number; output: unknown; error: string | null; started_at: number | null; finished_at: number | null; duration: number | null; input_tokens: number; output_tokens: number; cost: number }
export interface ExecutionOut extends ExecutionSummary {
  inputs: Record<string, unknown>;
  outputs: Record<string, unknown> | null;
  duration: number | null;
  last_seq: number;
  input_tokens: number;
  output_tokens: number;
  cost: number;
  nodes: NodeRunOut[];
}

const enc = encodeURIComponent;

export const auth = {
  register: (body: { tenant_name: string; slug: string; email: string; password: string }) =>
    api.post<{ tenant: TenantOut; user: UserOut }>('/auth/register', body),
  login: (email: string, password: string) => api.post<TokenOut>('/auth/login', { email, password }),
  logout: () => api.post<void>('/auth/logout'),
  me: () => api.get<Me>('/auth/me'),
};

export const agents = {
  page: listPage<Agent>('/agents', 50),
  all: () => fetchAllPages(listPage<Agent>('/agents', 100)),
  get: (id: string) => api.get<Agent>(`/agents/${enc(id)}`),
  create: (body: AgentIn) => api.post<Agent>('/agents', body),
  update: (id: string, body: Partial<Agent>) => api.patch<Agent>(`/agents/${enc(id)}`, body),
  remove: (id: string) => api.del(`/agents/${enc(id)}`),
};

export const crews = {
  all: () => fetchAllPages(listPage<Crew>('/crews', 100)),
};

export const flows = {
  page: (cursor: string | null) => api.get<Page<FlowSummary>>('/flows', { cursor, limit: 50 }),
  get: (id: string) => api.get<FlowOut>(`/flows/${enc(id)}`),
  version: (id: string, v: number) => api.get<FlowVersionOut>(`/flows/${enc(id)}/versions/${v}`),
  versions: (id: string, cursor: string | null) =>
    api.get<Page<Omit<FlowVersionOut, 'definition'>>>(`/flows/${enc(id)}/versions`, { cursor, limit: 50 }),
  create: (doc: FlowDocument) => api.post<FlowOut>('/flows', doc),
  save: (id: string, doc: FlowDocument, expectedVersion: number) =>
    api.put<FlowOut>(`/flows/${enc(id)}`, { expected_version: expectedVersion, definition: doc }),
  remove: (id: string) => api.del(`/flows/${enc(id)}`),
  validate: (doc: FlowDocument) => api.post<ValidationOut>('/flows/validate', doc),
  execute: (id: string, inputs: Record<string, unknown>, idempotencyKey: string) =>
    api.post<{ execution_id: string; status_url: string }>(`/flows/${enc(id)}/execute`, { inputs }, { 'Idempotency-Key': idempotencyKey }),
  executions: (id: string, cursor: string | null) => api.get<Page<ExecutionSummary>>(`/flows/${enc(id)}/executions`, { cursor, limit: 20 }),
};

export const executions = {
  get: (id: string) => api.get<ExecutionOut>(`/executions/${enc(id)}`),
  cancel: (id: string) => api.post<{ execution_id: string; status: string }>(`/executions/${enc(id)}/cancel`),
  logs: (id: string, cursor: string | null, limit = 100) =>
    api.get<Page<Omit<ExecutionEvent, 'execution_id'>>>(`/executions/${enc(id)}/logs`, { cursor, limit }),
};

/** What each role may do (the seed's matrix; the API enforces it anyway). */
export function permissions(role: Role | undefined) {
  const writer = role === 'admin' || role === 'member';
  return { editAgents: writer, editFlows: writer, execute: writer, admin: role === 'admin' };
}

export type ProviderKind = 'openai' | 'azure' | 'vllm' | 'lmstudio' | 'ollama' | 'anthropic' | 'scripted';
export const PROVIDER_KINDS: ProviderKind[] = ['openai', 'azure', 'vllm', 'lmstudio', 'ollama', 'anthropic', 'scripted'];
export interface Provider {
  id: string; name: string; kind: ProviderKind; model: string; base_url: string | null; priority: number;
  price_input_per_1k: number; price_output_per_1k: number; budget: number | null; is_active: boolean;
  has_key: boolean; api_key: string | null; settings: Record<string, unknown>; created_at: number; updated_at: number;
}
export interface ProviderIn {
  name: string; kind: ProviderKind; model: string; api_key?: string | null; base_url?: string | null; priority?: number;
  price_input_per_1k?: number; price_output_per_1k?: number; budget?: number | null; is_active?: boolean;
}

export const providers = {
  all: () => fetchAllPages(listPage<Provider>('/providers', 100)),
  create: (body: ProviderIn) => api.post<Provider>('/providers', body),
  update: (id: string, body: Partial<ProviderIn>) => api.patch<Provider>(`/providers/${enc(id)}`, body),
  remove: (id: string) => api.del(`/providers/${enc(id)}`),
  reorder: (order: string[]) => api.put<Provider[]>('/providers/order', { order }),
};

/** ToolOut of src/crewflow/entrypoints/http/tools.py. */
export interface Tool {
  id: string; name: string; description: string; dockerfile: string | null; docker_image: string | null;
  script: string | null; context: Record<string, string>;
  input_schema: Record<string, unknown>; output_schema: Record<string, unknown>; limits: Record<string, unknown>;
  warm_pool: number; build_status: string; image_digest: string | null; build_error: string | null; built_at: number | null;
  is_active: boolean; version: number; created_at: number; updated_at: number;
}
/** ToolIn: one of dockerfile (with context files), docker_image or script. */
export interface ToolIn {
  name: string; input_schema: Record<string, unknown>; output_schema: Record<string, unknown>;
  dockerfile?: string | null; docker_image?: string | null; script?: string | null; context?: Record<string, string>;
  limits?: Record<string, unknown>; warm_pool?: number; description?: string;
}
export type ToolPatch = Partial<Omit<ToolIn, 'name'>> & { is_active?: boolean };
/** ToolStatusOut: poll while build_status is queued or building. */
export interface ToolStatus { id: string; version: number; build_status: string; image: string | null; build_error: string | null; built_at: number | null; log_tail: string[] }
/** ToolTestOut: the tool failing is ok=false with the reason in error. */
export interface ToolTestResult { ok: boolean; output: unknown; error: string | null; logs: string[]; duration: number }

export const tools = {
  all: () => fetchAllPages(listPage<Tool>('/tools', 100)),
  get: (id: string) => api.get<Tool>(`/tools/${enc(id)}`),
  create: (body: ToolIn) => api.post<Tool>('/tools', body),
  update: (id: string, body: ToolPatch) => api.patch<Tool>(`/tools/${enc(id)}`, body),
  remove: (id: string) => api.del(`/tools/${enc(id)}`),
  build: (id: string) => api.post<ToolStatus>(`/tools/${enc(id)}/build`),
  rebuild: (id: string) => api.post<ToolStatus>(`/tools/${enc(id)}/rebuild`),
  status: (id: string, lines = 50) => api.get<ToolStatus>(`/tools/${enc(id)}/status`, { lines }),
  test: (id: string, input: unknown) => api.post<ToolTestResult>(`/tools/${enc(id)}/test`, { input }),
};

export type CrewIn = Omit<Crew, 'id'> & { id?: string };
export const crewsApi = {
  all: () => fetchAllPages(listPage<Crew>('/crews', 100)),
  create: (body: CrewIn) => api.post<Crew>('/crews', body),
  update: (id: string, body: Partial<CrewIn>) => api.patch<Crew>(`/crews/${enc(id)}`, body),
  remove: (id: string) => api.del(`/crews/${enc(id)}`),
};

export const users = {
  all: () => fetchAllPages(listPage<UserOut>('/users', 100)),
  invite: (body: { email: string; role: Role; password: string }) => api.post<UserOut>('/users', body),
  update: (id: string, body: { role?: Role; is_active?: boolean }) => api.patch<UserOut>(`/users/${enc(id)}`, body),
  remove: (id: string) => api.del(`/users/${enc(id)}`),
};
