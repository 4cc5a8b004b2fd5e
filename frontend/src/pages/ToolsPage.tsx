import { useState, type FormEvent } from 'react';
import { useMutation, useQuery, useQueryClient } from '@tanstack/react-query';
import { tools } from '../api/resources';
import { useSession } from '../auth';
import { ErrorBox, Field, Page, StatusBadge, btnDanger, btnPrimary, btnSecondary, inputCls } from '../components/ui';

const SCHEMA_EXAMPLE = '{\n  "type": "object",\n  "properties": {"text": {"type": "string"}},\n  "required": ["text"]\n}';

export function ToolsPage() {
  const { can } = useSession();
  const qc = useQueryClient();
  const list = useQuery({ queryKey: ['tools'], queryFn: tools.all, enabled: can.admin });
  const [creating, setCreating] = useState(false);
  const remove = useMutation({ mutationFn: (id: string) => tools.remove(id), onSuccess: () => qc.invalidateQueries({ queryKey: ['tools'] }) });
  if (!can.admin) return <Page title="Tools"><p className="text-sm text-slate-600">Only admins register tools.</p></Page>;
  return (
    <Page title="Tools" actions={<button className={btnPrimary} onClick={() => setCreating(true)}>Register tool</button>}>
      <ErrorBox error={list.error ?? remove.error} />
      {creating && <ToolForm onDone={() => setCreating(false)} />}
      <table className="w-full border-collapse bg-white text-sm" data-testid="tools-table">
        <thead><tr className="border-b text-left text-slate-600"><th className="p-2">Name</th><th className="p-2">Description</th><th className="p-2">Source</th><th className="p-2">Build</th><th className="p-2">Version</th><th className="p-2" /></tr></thead>
        <tbody>
          {(list.data ?? []).map((t) => (
            <tr key={t.id} className="border-b align-top">
              <td className="p-2 font-mono">{t.name}</td>
              <td className="p-2">{t.description}</td>
              <td className="p-2 text-xs">{t.docker_image ?? (t.dockerfile ? `Dockerfile (${t.dockerfile.split('\n').length} lines)` : '—')}</td>
              <td className="p-2"><StatusBadge status={t.build_status} /></td>
              <td className="p-2">v{t.version}{t.is_active ? '' : ' (inactive)'}</td>
              <td className="p-2 text-right"><button className={btnDanger} onClick={() => { if (confirm(`Delete tool ${t.name}?`)) remove.mutate(t.id); }}>Delete</button></td>
            </tr>
          ))}
          {!list.isLoading && !list.data?.length && <tr><td className="p-4 text-slate-500" colSpan={6}>No tools registered.</td></tr>}
        </tbody>
      </table>
    </Page>
  );
}

function parseJson(label: string, text: string): object {
  try {
    const v = JSON.parse(text);
    if (!v || typeof v !== 'object' || Array.isArray(v)) throw new Error('not an object');
    return v;
  } catch (e) {
    throw new Error(`${label}: ${(e as Error).message}`);
  }
}

function ToolForm({ onDone }: { onDone: () => void }) {
  const qc = useQueryClient();
  const [f, setF] = useState({ name: '', description: '', dockerfile: 'FROM python:3.12-slim\nCOPY tool.py /tool.py\nENTRYPOINT ["python", "/tool.py"]\n', image: '', input: SCHEMA_EXAMPLE, output: '{"type": "object"}' });
  const save = useMutation({
    mutationFn: () => tools.create({
      name: f.name, description: f.description,
      input_schema: parseJson('input schema', f.input), output_schema: parseJson('output schema', f.output),
      dockerfile: f.image ? null : f.dockerfile, docker_image: f.image || null,
    }),
    onSuccess: () => { qc.invalidateQueries({ queryKey: ['tools'] }); onDone(); },
  });
  const submit = (e: FormEvent) => { e.preventDefault(); save.mutate(); };
  return (
    <form onSubmit={submit} className="mb-4 grid grid-cols-2 gap-3 rounded border border-slate-200 bg-white p-4" data-testid="tool-form">
      <Field label="Name (the tool's id)"><input name="name" className={inputCls} value={f.name} onChange={(e) => setF({ ...f, name: e.target.value })} required /></Field>
      <Field label="Description"><input name="description" className={inputCls} value={f.description} onChange={(e) => setF({ ...f, description: e.target.value })} /></Field>
      <Field label="Dockerfile"><textarea className={`${inputCls} font-mono`} rows={5} value={f.dockerfile} onChange={(e) => setF({ ...f, dockerfile: e.target.value })} disabled={!!f.image} /></Field>
      <Field label="…or an image (instead of the Dockerfile)"><input className={inputCls} value={f.image} onChange={(e) => setF({ ...f, image: e.target.value })} placeholder="ghcr.io/acme/wordcount:1" /></Field>
      <Field label="Input JSON Schema"><textarea className={`${inputCls} font-mono`} rows={6} value={f.input} onChange={(e) => setF({ ...f, input: e.target.value })} /></Field>
      <Field label="Output JSON Schema"><textarea className={`${inputCls} font-mono`} rows={6} value={f.output} onChange={(e) => setF({ ...f, output: e.target.value })} /></Field>
      <div className="col-span-2"><ErrorBox error={save.error} /></div>
      <div className="col-span-2 flex gap-2"><button className={btnPrimary} disabled={save.isPending}>Register</button><button type="button" className={btnSecondary} onClick={onDone}>Cancel</button></div>
    </form>
  );
}
