import { useState, type FormEvent } from 'react';
import { useMutation, useQuery, useQueryClient } from '@tanstack/react-query';
import { agents as agentsApi, crewsApi, type Crew } from '../api/resources';
import { useSession } from '../auth';
import { ErrorBox, Field, Page, btnDanger, btnPrimary, btnSecondary, inputCls } from '../components/ui';

export function CrewsPage() {
  const { can } = useSession();
  const qc = useQueryClient();
  const list = useQuery({ queryKey: ['crews', 'all'], queryFn: crewsApi.all });
  const [editing, setEditing] = useState<Crew | 'new' | null>(null);
  const remove = useMutation({ mutationFn: (id: string) => crewsApi.remove(id), onSuccess: () => qc.invalidateQueries({ queryKey: ['crews'] }) });
  return (
    <Page title="Crews" actions={can.editAgents && <button className={btnPrimary} onClick={() => setEditing('new')}>New crew</button>}>
      <ErrorBox error={list.error ?? remove.error} />
      {editing && <CrewForm crew={editing === 'new' ? null : editing} onDone={() => setEditing(null)} />}
      <table className="w-full border-collapse bg-white text-sm" data-testid="crews-table">
        <thead><tr className="border-b text-left text-slate-600"><th className="p-2">Id</th><th className="p-2">Process</th><th className="p-2">Agents</th><th className="p-2">Tasks</th><th className="p-2" /></tr></thead>
        <tbody>
          {(list.data ?? []).map((c) => (
            <tr key={c.id} className="border-b align-top">
              <td className="p-2 font-mono">{c.id}<div className="text-xs text-slate-500">{c.description}</div></td>
              <td className="p-2">{c.process}</td>
              <td className="p-2">{c.agents.join(', ')}</td>
              <td className="p-2">{c.tasks.map((t) => t.name).join(' → ')}</td>
              <td className="whitespace-nowrap p-2 text-right">
                {can.editAgents && <><button className={btnSecondary} onClick={() => setEditing(c)}>Edit</button>{' '}<button className={btnDanger} onClick={() => { if (confirm(`Delete crew ${c.id}?`)) remove.mutate(c.id); }}>Delete</button></>}
              </td>
            </tr>
          ))}
          {!list.isLoading && !list.data?.length && <tr><td className="p-4 text-slate-500" colSpan={5}>No crews yet.</td></tr>}
        </tbody>
      </table>
    </Page>
  );
}

type TaskDraft = { name: string; description: string; expected_output: string; agent: string; context: string };

function CrewForm({ crew, onDone }: { crew: Crew | null; onDone: () => void }) {
  const qc = useQueryClient();
  const agentsQ = useQuery({ queryKey: ['agents', 'all'], queryFn: agentsApi.all });
  const [id, setId] = useState(crew?.id ?? '');
  const [process, setProcess] = useState(crew?.process ?? 'sequential');
  const [description, setDescription] = useState(crew?.description ?? '');
  const [members, setMembers] = useState<string[]>(crew?.agents ?? []);
  const [tasks, setTasks] = useState<TaskDraft[]>(crew?.tasks.map((t) => ({ ...t, agent: t.agent ?? '', context: t.context.join(', ') })) ?? [{ name: 'task1', description: '', expected_output: '', agent: '', context: '' }]);
  const save = useMutation({
    mutationFn: () => {
      const body = {
        process, description, agents: members, manager_provider: crew?.manager_provider ?? null,
        tasks: tasks.map((t) => ({ name: t.name, description: t.description, expected_output: t.expected_output, agent: t.agent || null, context: t.context.split(',').map((s) => s.trim()).filter(Boolean) })),
      };
      return crew ? crewsApi.update(crew.id, body) : crewsApi.create(id.trim() ? { ...body, id: id.trim() } : body);
    },
    onSuccess: () => { qc.invalidateQueries({ queryKey: ['crews'] }); onDone(); },
  });
  const submit = (e: FormEvent) => { e.preventDefault(); save.mutate(); };
  const setTask = (i: number, patch: Partial<TaskDraft>) => setTasks(tasks.map((t, j) => (j === i ? { ...t, ...patch } : t)));
  return (
    <form onSubmit={submit} className="mb-4 space-y-3 rounded border border-slate-200 bg-white p-4" data-testid="crew-form">
      <h2 className="font-semibold">{crew ? `Edit crew ${crew.id}` : 'New crew'}</h2>
      <div className="grid grid-cols-3 gap-3">
        {!crew && <Field label="Id (optional)"><input name="id" className={inputCls} value={id} onChange={(e) => setId(e.target.value)} /></Field>}
        <Field label="Process"><select className={inputCls} value={process} onChange={(e) => setProcess(e.target.value)}><option>sequential</option><option>hierarchical</option></select></Field>
        <Field label="Description"><input className={inputCls} value={description} onChange={(e) => setDescription(e.target.value)} /></Field>
      </div>
      <div>
        <div className="mb-1 text-sm font-medium">Members</div>
        <div className="flex flex-wrap gap-3 text-sm">
          {(agentsQ.data ?? []).map((a) => (
            <label key={a.id}><input type="checkbox" name={`member-${a.id}`} checked={members.includes(a.id)} onChange={(e) => setMembers(e.target.checked ? [...members, a.id] : members.filter((m) => m !== a.id))} /> {a.id}</label>
          ))}
          {agentsQ.data?.length === 0 && <span className="text-slate-500">Create agents first.</span>}
        </div>
      </div>
      <div className="space-y-2">
        <div className="text-sm font-medium">Tasks (in order)</div>
        {tasks.map((t, i) => (
          <div key={i} className="grid grid-cols-4 gap-2 rounded border border-slate-200 p-2">
            <input name={`task-${i}-name`} className={inputCls} placeholder="name" value={t.name} onChange={(e) => setTask(i, { name: e.target.value })} />
            <select name={`task-${i}-agent`} className={inputCls} value={t.agent} onChange={(e) => setTask(i, { agent: e.target.value })}><option value="">— agent —</option>{members.map((m) => <option key={m}>{m}</option>)}</select>
            <input className={inputCls} placeholder="context: earlier task names" value={t.context} onChange={(e) => setTask(i, { context: e.target.value })} />
            <button type="button" className="text-left text-sm text-red-600" onClick={() => setTasks(tasks.filter((_, j) => j !== i))}>remove</button>
            <textarea name={`task-${i}-description`} className={`${inputCls} col-span-2`} rows={2} placeholder="description ({placeholders} come from the node's inputs)" value={t.description} onChange={(e) => setTask(i, { description: e.target.value })} />
            <textarea className={`${inputCls} col-span-2`} rows={2} placeholder="expected output" value={t.expected_output} onChange={(e) => setTask(i, { expected_output: e.target.value })} />
          </div>
        ))}
        <button type="button" className={btnSecondary} onClick={() => setTasks([...tasks, { name: `task${tasks.length + 1}`, description: '', expected_output: '', agent: '', context: '' }])}>Add task</button>
      </div>
      <ErrorBox error={save.error} />
      <div className="flex gap-2"><button className={btnPrimary} disabled={save.isPending}>{crew ? 'Save' : 'Create crew'}</button><button type="button" className={btnSecondary} onClick={onDone}>Cancel</button></div>
    </form>
  );
}
