import { Link, useParams } from 'react-router-dom';
import { useInfiniteQuery } from '@tanstack/react-query';
import { flows } from '../api/resources';
import { ErrorBox, Page, StatusBadge, btnSecondary, when } from '../components/ui';

export function ExecutionsPage() {
  const { flowId } = useParams();
  const list = useInfiniteQuery({
    queryKey: ['executions', flowId],
    queryFn: ({ pageParam }) => flows.executions(flowId!, pageParam),
    initialPageParam: null as string | null,
    getNextPageParam: (last) => last.next_cursor,
    refetchInterval: 5000,
  });
  const items = list.data?.pages.flatMap((p) => p.items) ?? [];
  return (
    <Page title={`Executions of ${flowId}`} actions={<Link className={btnSecondary} to={`/flows/${encodeURIComponent(flowId!)}`}>Open flow</Link>}>
      <ErrorBox error={list.error} />
      <table className="w-full border-collapse bg-white text-sm" data-testid="executions-table">
        <thead><tr className="border-b text-left text-slate-600"><th className="p-2">Execution</th><th className="p-2">Version</th><th className="p-2">Status</th><th className="p-2">Created</th><th className="p-2">Finished</th><th className="p-2">Error</th></tr></thead>
        <tbody>
          {items.map((e) => (
            <tr key={e.id} className="border-b">
              <td className="p-2 font-mono text-xs"><Link className="text-blue-700 underline" to={`/executions/${encodeURIComponent(e.id)}`}>{e.id}</Link></td>
              <td className="p-2">v{e.flow_version}</td>
              <td className="p-2"><StatusBadge status={e.status} /></td>
              <td className="p-2">{when(e.created_at)}</td>
              <td className="p-2">{when(e.finished_at)}</td>
              <td className="p-2 text-red-700">{e.error}</td>
            </tr>
          ))}
          {!list.isLoading && items.length === 0 && <tr><td className="p-4 text-slate-500" colSpan={6}>No runs yet.</td></tr>}
        </tbody>
      </table>
      {list.hasNextPage && <button className={`${btnSecondary} mt-3`} onClick={() => list.fetchNextPage()}>Load more</button>}
    </Page>
  );
}
