import { useState } from 'react';
import { Link, useNavigate } from 'react-router-dom';
import { useInfiniteQuery, useMutation, useQueryClient } from '@tanstack/react-query';
import { flows } from '../api/resources';
import { useSession } from '../auth';
import { ErrorBox, Page, btnDanger, btnPrimary, btnSecondary, inputCls, when } from '../components/ui';
import { EXAMPLE_FLOW, parseFlowText } from '../lib/importDoc';

export function FlowsPage() {
  const { can } = useSession();
  const qc = useQueryClient();
  const list = useInfiniteQuery({
    queryKey: ['flows', 'pages'],
    queryFn: ({ pageParam }) => flows.page(pageParam),
    initialPageParam: null as string | null,
    getNextPageParam: (last) => last.next_cursor,
  });
  const remove = useMutation({ mutationFn: (id: string) => flows.remove(id), onSuccess: () => qc.invalidateQueries({ queryKey: ['flows'] }) });
  const items = list.data?.pages.flatMap((p) => p.items) ?? [];
  const [importing, setImporting] = useState(false);
  return (
    <Page title="Flows" actions={can.editFlows && (
      <>
        <button className={btnSecondary} onClick={() => setImporting(true)}>Import…</button>
        <Link to="/flows/new" className={btnPrimary}>New flow</Link>
      </>
    )}>
      <ErrorBox error={list.error ?? remove.error} />
      {importing && <ImportForm onDone={() => setImporting(false)} />}
      <table className="w-full border-collapse bg-white text-sm" data-testid="flows-table">
        <thead><tr className="border-b text-left text-slate-600"><th className="p-2">Name</th><th className="p-2">Id</th><th className="p-2">Version</th><th className="p-2">Updated</th><th className="p-2" /></tr></thead>
        <tbody>
          {items.map((f) => (
            <tr key={f.id} className="border-b">
              <td className="p-2"><Link className="text-blue-700 underline" to={`/flows/${encodeURIComponent(f.id)}`}>{f.name || f.id}</Link><div className="text-xs text-slate-500">{f.description}</div></td>
              <td className="p-2 font-mono text-xs">{f.id}</td>
              <td className="p-2">v{f.current_version}</td>
              <td className="p-2">{when(f.updated_at)}</td>
              <td className="whitespace-nowrap p-2 text-right">
                <Link className={btnSecondary} to={`/flows/${encodeURIComponent(f.id)}/executions`}>Executions</Link>{' '}
                {can.editFlows && <button className={btnDanger} onClick={() => { if (confirm(`Delete flow ${f.id}?`)) remove.mutate(f.id); }}>Delete</button>}
              </td>
            </tr>
          ))}
          {!list.isLoading && items.length === 0 && <tr><td className="p-4 text-slate-500" colSpan={5}>No flows yet.</td></tr>}
        </tbody>
      </table>
      {list.hasNextPage && <button className={`${btnSecondary} mt-3`} onClick={() => list.fetchNextPage()}>Load more</button>}
    </Page>
  );
}

function ImportForm({ onDone }: { onDone: () => void }) {
  const [text, setText] = useState('');
  const qc = useQueryClient();
  const navigate = useNavigate();
  const save = useMutation({
    mutationFn: () => flows.create(parseFlowText(text)),
    onSuccess: (out) => {
      qc.invalidateQueries({ queryKey: ['flows'] });
      navigate(`/flows/${encodeURIComponent(out.id)}`);
    },
  });
  const load = async (file: File | undefined) => { if (file) setText(await file.text()); };
  return (
    <div className="mb-4 space-y-2 rounded border border-slate-200 bg-white p-4" data-testid="import-form">
      <h2 className="font-semibold">Import a flow document (YAML or JSON)</h2>
      <div className="flex items-center gap-3 text-sm">
        <input type="file" accept=".yaml,.yml,.json" onChange={(e) => load(e.target.files?.[0])} />
        <button className={btnSecondary} onClick={() => setText(EXAMPLE_FLOW)}>Use the example</button>
      </div>
      <textarea name="document" className={`${inputCls} font-mono`} rows={12} value={text} onChange={(e) => setText(e.target.value)} placeholder="name: My flow&#10;nodes: [...]&#10;edges: [...]" />
      <ErrorBox error={save.error} />
      <div className="flex gap-2">
        <button className={btnPrimary} disabled={!text.trim() || save.isPending} onClick={() => save.mutate()}>Import</button>
        <button className={btnSecondary} onClick={onDone}>Cancel</button>
      </div>
    </div>
  );
}
