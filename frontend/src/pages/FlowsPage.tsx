import { Link } from 'react-router-dom';
import { useInfiniteQuery, useMutation, useQueryClient } from '@tanstack/react-query';
import { flows } from '../api/resources';
import { useSession } from '../auth';
import { ErrorBox, Page, btnDanger, btnPrimary, btnSecondary, when } from '../components/ui';

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
  return (
    <Page title="Flows" actions={can.editFlows && <Link to="/flows/new" className={btnPrimary}>New flow</Link>}>
      <ErrorBox error={list.error ?? remove.error} />
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
