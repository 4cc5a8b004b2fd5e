import { useState, type FormEvent } from 'react';
import { useInfiniteQuery, useMutation, useQuery, useQueryClient } from '@tanstack/react-query';
import { agents, providers, type Agent, type AgentIn } from '../api/resources';
import { useSession } from '../auth';
import { ErrorBox, Field, Page, btnDanger, btnPrimary, btnSecondary, inputCls } from '../components/ui';

export function AgentsPage() {
  const { can } = useSession();
  const qc = useQueryClient();
  const [editing, setEditing] = useState<Agent | 'new' | null>(null);
  const list = useInfiniteQuery({
    queryKey: ['agents', 'pages'],
    queryFn: ({ pageParam }) => agents.page(pageParam),
    initialPageParam: null as string | null,
    getNextPageParam: (last) => last.next_cursor,
  });
  const remove = useMutation({
    mutationFn: (id: string) => agents.remove(id),
    onSuccess: () => qc.invalidateQueries({ queryKey: ['agents'] }),
  });
  const items = list.data?.pages.flatMap((p) => p.items) ?? [];
  return (
    <Page title="Agents" actions={can.editAgents && <button className={btnPrimary} onClick={() => setEditing('new')}>New agent</button>}>
      <ErrorBox error={list.error ?? remove.error} />
      {editing && <AgentForm agent={editing === 'new' ? null : editing} onDone={() => setEditing(null)} />}
      <table className="mt-3 w-full border-collapse bg-white text-sm" data-testid="agents-table">
        <thead>
          <tr className="border-b text-left text-slate-600"><th className="p-2">Id</th><th className="p-2">Role</th><th className="p-2">Goal</th><th className="p-2">Provider</th><th className="p-2" /></tr>
        </thead>
        <tbody>
          {items.map((a) => (
            <tr key={a.id} className="border-b align-top">
              <td className="p-2 font-mono">{a.id}</td>
              <td className="p-2">{a.role}</td>
              <td className="p-2 text-slate-600">{a.goal}</td>
              <td className="p-2">{a.provider ?? <span className="text-slate-400">default</span>}{a.model ? ` · ${a.model}` : ''}</td>
              <td className="whitespace-nowrap p-2 text-right">
                {can.editAgents && (
                  <>
                    <button className={btnSecondary} onClick={() => setEditing(a)}>Edit</button>{' '}
                    <button className={btnDanger} onClick={() => { if (confirm(`Delete agent ${a.id}?`)) remove.mutate(a.id); }}>Delete</button>
                  </>
                )}
              </td>
            </tr>
          ))}
          {!list.isLoading && items.length === 0 && <tr><td className="p-4 text-slate-500" colSpan={5}>No agents yet.</td></tr>}
        </tbody>
      </table>
      {list.hasNextPage && <button className={`${btnSecondary} mt-3`} onClick={() => list.fetchNextPage()} disabled={list.isFetchingNextPage}>Load more</button>}
    </Page>
  );
}

function AgentForm({ agent, onDone }: { agent: Agent | null; onDone: () => void }) {
  const qc = useQueryClient();
  const { can } = useSession();
  // Provider names to suggest (only admins may list providers; anyone may type one).
  const providerList = useQuery({ queryKey: ['providers'], queryFn: providers.all, enabled: can.admin, retry: false });
  const [f, setF] = useState({
    id: agent?.id ?? '',
    role: agent?.role ?? '',
    goal: agent?.goal ?? '',
    backstory: agent?.backstory ?? '',
    provider: agent?.provider ?? 'scripted',
    model: agent?.model ?? '',
    tools: agent?.tools.join(', ') ?? '',
    temperature: agent?.temperature == null ? '' : String(agent.temperature),
    max_iter: String(agent?.max_iter ?? 20),
    allow_delegation: agent?.allow_delegation ?? false,
    cache: agent?.cache ?? true,
  });
  const set = (k: keyof typeof f) => (e: { target: { value: string; checked?: boolean; type?: string } }) =>
    setF({ ...f, [k]: e.target.type === 'checkbox' ? !!e.target.checked : e.target.value });
  const save = useMutation({
    mutationFn: async () => {
      const body: AgentIn = {
        role: f.role,
        goal: f.goal,
        backstory: f.backstory,
        provider: f.provider.trim() || null,
        model: f.model.trim() || null,
        tools: f.tools.split(',').map((t) => t.trim()).filter(Boolean),
        temperature: f.temperature === '' ? null : Number(f.temperature),
        max_iter: Number(f.max_iter) || 20,
        allow_delegation: f.allow_delegation,
        cache: f.cache,
      };
      if (agent) return agents.update(agent.id, body);
      return agents.create(f.id.trim() ? { ...body, id: f.id.trim() } : body);
    },
    onSuccess: () => {
      qc.invalidateQueries({ queryKey: ['agents'] });
      onDone();
    },
  });
  const submit = (e: FormEvent) => {
    e.preventDefault();
    save.mutate();
  };
  return (
    <form onSubmit={submit} className="mb-4 grid grid-cols-2 gap-3 rounded border border-slate-200 bg-white p-4" data-testid="agent-form">
      <h2 className="col-span-2 font-semibold">{agent ? `Edit agent ${agent.id}` : 'New agent'}</h2>
      {!agent && <Field label="Id (optional)" hint="letters, digits, _ and -; generated from the role when empty"><input name="id" className={inputCls} value={f.id} onChange={set('id')} /></Field>}
      <Field label="Role"><input name="role" className={inputCls} value={f.role} onChange={set('role')} required /></Field>
      <div className="col-span-2"><Field label="Goal"><input name="goal" className={inputCls} value={f.goal} onChange={set('goal')} required /></Field></div>
      <div className="col-span-2"><Field label="Backstory"><textarea name="backstory" className={inputCls} rows={2} value={f.backstory} onChange={set('backstory')} /></Field></div>
      <Field label="Provider" hint="'scripted' runs offline; empty = the tenant's providers"><input name="provider" list="provider-names" className={inputCls} value={f.provider} onChange={set('provider')} /></Field>
      <datalist id="provider-names"><option value="scripted" />{(providerList.data ?? []).map((p) => <option key={p.id} value={p.name} />)}</datalist>
      <Field label="Model (optional)"><input name="model" className={inputCls} value={f.model} onChange={set('model')} /></Field>
      <Field label="Tools" hint="comma-separated tool ids"><input name="tools" className={inputCls} value={f.tools} onChange={set('tools')} /></Field>
      <Field label="Temperature"><input name="temperature" type="number" step="0.1" min="0" max="2" className={inputCls} value={f.temperature} onChange={set('temperature')} /></Field>
      <Field label="Max iterations"><input name="max_iter" type="number" min="1" max="1000" className={inputCls} value={f.max_iter} onChange={set('max_iter')} /></Field>
      <div className="flex items-end gap-4 text-sm">
        <label><input type="checkbox" checked={f.allow_delegation} onChange={set('allow_delegation')} /> allow delegation</label>
        <label><input type="checkbox" checked={f.cache} onChange={set('cache')} /> response cache</label>
      </div>
      <div className="col-span-2"><ErrorBox error={save.error} /></div>
      <div className="col-span-2 flex gap-2">
        <button className={btnPrimary} disabled={save.isPending}>{agent ? 'Save' : 'Create agent'}</button>
        <button type="button" className={btnSecondary} onClick={onDone}>Cancel</button>
      </div>
    </form>
  );
}
