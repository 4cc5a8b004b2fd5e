import '@xyflow/react/dist/style.css';
import { useEffect, useMemo, useState } from 'react';
import { Link, useParams } from 'react-router-dom';
import { useInfiniteQuery, useQuery, useQueryClient } from '@tanstack/react-query';
import { Background, Controls, MiniMap, ReactFlow, ReactFlowProvider, type Edge, type NodeChange } from '@xyflow/react';
import { executions, flows, type ExecutionOut } from '../api/resources';
import { useSession } from '../auth';
import { nodeTypes, type FlowRFNode } from '../components/FlowNode';
import { ErrorBox, StatusBadge, btnDanger, btnSecondary, when } from '../components/ui';
import { docToCanvas, type Canvas } from '../lib/flowDoc';
import { ExecutionStream, type ConnectionStatus } from '../lib/eventStream';
import { attemptTotals, initialRunState, isTerminalRun, type NodeRun, type RunState } from '../lib/runEvents';

export function ExecutionPage() {
  const { executionId } = useParams();
  const exec = useQuery({ queryKey: ['execution', executionId], queryFn: () => executions.get(executionId!) });
  const version = useQuery({
    queryKey: ['flow-version', exec.data?.flow_id, exec.data?.flow_version],
    queryFn: () => flows.version(exec.data!.flow_id, exec.data!.flow_version),
    enabled: !!exec.data,
    staleTime: Infinity,
  });
  // One canvas per flow version: a new object would restart the live stream.
  const canvas = useMemo(() => (version.data ? docToCanvas(version.data.definition) : null), [version.data]);
  if (exec.error || version.error) return <div className="p-6"><ErrorBox error={exec.error ?? version.error} /></div>;
  if (!exec.data || !canvas) return <div className="p-6 text-slate-500">Loading run…</div>;
  return (
    <ReactFlowProvider>
      <LiveRun key={executionId} execution={exec.data} canvas={canvas} />
    </ReactFlowProvider>
  );
}

function LiveRun({ execution, canvas }: { execution: ExecutionOut; canvas: Canvas }) {
  const { can } = useSession();
  const qc = useQueryClient();
  const [run, setRun] = useState<RunState>(() => initialRunState(canvas.nodes.map((n) => n.id)));
  const [conn, setConn] = useState<{ status: ConnectionStatus; detail?: string }>({ status: 'connecting' });
  const [selected, setSelected] = useState<string | null>(null);
  const [tab, setTab] = useState<'node' | 'logs'>('node');
  const [cancelError, setCancelError] = useState<unknown>(null);
  const [sizes, setSizes] = useState<Record<string, { width: number; height: number }>>({});

  useEffect(() => {
    const stream = new ExecutionStream({
      executionId: execution.id,
      initial: initialRunState(canvas.nodes.map((n) => n.id)),
      onState: setRun,
      onStatus: (status, detail) => setConn({ status, detail }),
    });
    stream.start();
    return () => stream.stop();
    // eslint-disable-next-line react-hooks/exhaustive-deps -- the canvas of an execution never changes
  }, [execution.id]);

  const terminal = isTerminalRun(run.status);
  useEffect(() => {
    if (terminal) qc.invalidateQueries({ queryKey: ['execution', execution.id] });
  }, [terminal, qc, execution.id]);
  const summary = useQuery({ queryKey: ['execution', execution.id], queryFn: () => executions.get(execution.id), initialData: execution });

  const nodes: FlowRFNode[] = useMemo(() => canvas.nodes.map((n) => ({
    id: n.id, type: 'crewflow', position: n.position, selected: n.id === selected, draggable: false,
    measured: sizes[n.id],
    data: { body: n.data.body, status: run.nodes[n.id]?.status ?? 'pending' },
  })), [canvas, run, selected, sizes]);
  const edges: Edge[] = useMemo(() => canvas.edges.map((e) => {
    const s = run.nodes[e.source]?.status;
    const t = run.nodes[e.target]?.status;
    return { id: e.id, source: e.source, target: e.target, animated: s === 'completed' && (t === 'running' || t === 'retrying'),
      style: t === 'skipped' ? { strokeDasharray: '4 4', opacity: 0.5 } : s === 'completed' ? { stroke: '#16a34a' } : undefined };
  }), [canvas, run]);
  const onNodesChange = (changes: NodeChange<FlowRFNode>[]) => {
    const dims = changes.filter((c) => c.type === 'dimensions' && c.dimensions) as Array<{ id: string; dimensions: { width: number; height: number } }>;
    if (dims.length) setSizes((s) => ({ ...s, ...Object.fromEntries(dims.map((d) => [d.id, d.dimensions])) }));
    for (const c of changes) if (c.type === 'select' && c.selected) setSelected(c.id);
  };

  const cancel = async () => {
    setCancelError(null);
    try {
      await executions.cancel(execution.id);
    } catch (e) {
      setCancelError(e);
    }
  };

  const total = attemptTotals(Object.values(run.nodes).flatMap((n) => n.attempts));
  return (
    <div className="flex h-full flex-col">
      <div className="flex flex-wrap items-center gap-3 border-b bg-white px-3 py-2 text-sm">
        <Link to={`/flows/${encodeURIComponent(execution.flow_id)}`} className="text-blue-700 underline">{execution.flow_id}</Link>
        <span className="text-slate-500">v{execution.flow_version}</span>
        <span className="font-mono text-xs">{execution.id}</span>
        <span data-testid="run-status" data-status={run.status}><StatusBadge status={run.status} /></span>
        <span className="text-xs text-slate-500" data-testid="connection">live: {conn.status}{conn.detail ? ` (${conn.detail})` : ''}</span>
        <span className="text-xs text-slate-600">tokens {total.input + total.output} · cost ${total.cost.toFixed(4)}{total.failures ? ` · ${total.failures} failed attempt(s)` : ''}</span>
        <div className="ml-auto flex gap-2">
          <Link className={btnSecondary} to={`/flows/${encodeURIComponent(execution.flow_id)}/executions`}>History</Link>
          {can.execute && !terminal && <button className={btnDanger} onClick={cancel}>Cancel run</button>}
        </div>
      </div>
      {cancelError ? <div className="p-2"><ErrorBox error={cancelError} /></div> : null}
      {run.error && <div className="border-b bg-red-50 px-3 py-1 text-sm text-red-800">{run.error}</div>}
      <div className="flex min-h-0 flex-1">
        <div className="min-w-0 flex-1">
          <ReactFlow nodes={nodes} edges={edges} nodeTypes={nodeTypes} onNodesChange={onNodesChange} nodesConnectable={false} nodesDraggable={false}
            deleteKeyCode={null} fitView fitViewOptions={{ padding: 0.3, maxZoom: 1.2 }} proOptions={{ hideAttribution: true }}>
            <Background />
            <Controls showInteractive={false} />
            <MiniMap nodeColor={(n) => ({ completed: '#16a34a', failed: '#dc2626', running: '#2563eb', skipped: '#cbd5e1', retrying: '#d97706', cancelled: '#ea580c' } as Record<string, string>)[String((n.data as { status?: string }).status)] ?? '#94a3b8'} />
          </ReactFlow>
        </div>
        <aside className="w-96 shrink-0 overflow-y-auto border-l bg-white p-3 text-sm" data-testid="run-panel">
          <div className="mb-3 flex gap-2">
            <button className={tab === 'node' ? 'font-semibold underline' : ''} onClick={() => setTab('node')}>Node</button>
            <button className={tab === 'logs' ? 'font-semibold underline' : ''} onClick={() => setTab('logs')}>Event log</button>
          </div>
          {tab === 'node' && (selected
            ? <NodePanel id={selected} node={run.nodes[selected]} />
            : <RunPanel run={run} summary={summary.data} onSelect={setSelected} />)}
          {tab === 'logs' && <LogPanel executionId={execution.id} />}
        </aside>
      </div>
    </div>
  );
}

function show(v: unknown): string {
  if (v === undefined) return '';
  return typeof v === 'string' ? v : JSON.stringify(v, null, 2);
}

function RunPanel({ run, summary, onSelect }: { run: RunState; summary?: ExecutionOut; onSelect: (id: string) => void }) {
  return (
    <div className="space-y-3">
      <h2 className="font-semibold">Run</h2>
      <div>Status: <StatusBadge status={run.status} /></div>
      {summary && <div className="text-xs text-slate-600">started {when(summary.started_at)} · finished {when(summary.finished_at)}{summary.duration != null ? ` · ${summary.duration.toFixed(2)} s` : ''}</div>}
      <div>
        <div className="font-medium">Nodes</div>
        <ul>
          {Object.entries(run.nodes).map(([id, n]) => (
            <li key={id}><button className="underline" onClick={() => onSelect(id)}>{id}</button> <StatusBadge status={n.status} /></li>
          ))}
        </ul>
      </div>
      {run.outputs !== undefined && (
        <div>
          <div className="font-medium">Outputs</div>
          <pre className="max-h-96 overflow-auto whitespace-pre-wrap rounded bg-slate-50 p-2 text-xs" data-testid="run-outputs">{show(run.outputs)}</pre>
        </div>
      )}
      <p className="text-xs text-slate-500">Click a node to see its output, streamed tokens and LLM attempts.</p>
    </div>
  );
}

function NodePanel({ id, node }: { id: string; node?: NodeRun }) {
  if (!node) return <div>No events for {id} yet.</div>;
  const t = attemptTotals(node.attempts);
  return (
    <div className="space-y-3" data-testid="node-panel">
      <h2 className="font-semibold">{id} <StatusBadge status={node.status} /></h2>
      {node.attempt > 0 && <div className="text-xs text-slate-600">attempt {node.attempt}</div>}
      {node.error && <div className="rounded bg-red-50 p-2 text-xs text-red-800">{node.error}</div>}
      {node.output !== undefined && (
        <div>
          <div className="font-medium">Output</div>
          <pre className="max-h-72 overflow-auto whitespace-pre-wrap rounded bg-slate-50 p-2 text-xs" data-testid="node-output">{show(node.output)}</pre>
        </div>
      )}
      {node.tokens && (
        <div>
          <div className="font-medium">Streamed tokens</div>
          <pre className="max-h-48 overflow-auto whitespace-pre-wrap rounded bg-slate-50 p-2 text-xs">{node.tokens}</pre>
        </div>
      )}
      <div>
        <div className="font-medium">LLM attempts ({node.attempts.length})</div>
        {node.attempts.length > 0 && (
          <>
            <table className="w-full text-xs">
              <thead><tr className="text-left text-slate-500"><th>provider</th><th>outcome</th><th>tokens in/out</th><th>cost</th><th>ms</th></tr></thead>
              <tbody>
                {node.attempts.map((a, i) => (
                  <tr key={i} className={a.outcome === 'success' || a.outcome === 'cache_hit' ? '' : 'text-red-700'} title={a.error ?? undefined}>
                    <td>{a.provider}{a.model ? `/${a.model}` : ''}</td><td>{a.outcome}</td><td>{a.input_tokens}/{a.output_tokens}</td><td>${a.cost.toFixed(4)}</td><td>{a.latency_ms?.toFixed(0) ?? ''}</td>
                  </tr>
                ))}
              </tbody>
            </table>
            <div className="mt-1 text-xs text-slate-600">total {t.input} in / {t.output} out · ${t.cost.toFixed(4)} · {t.failures} failover(s) · providers {t.providers.join(', ')}</div>
          </>
        )}
      </div>
      {node.logs.length > 0 && (
        <div>
          <div className="font-medium">Logs</div>
          <pre className="max-h-48 overflow-auto whitespace-pre-wrap rounded bg-slate-50 p-2 text-xs">{node.logs.map((l) => JSON.stringify(l)).join('\n')}</pre>
        </div>
      )}
    </div>
  );
}

const LOG_PAGE = 25;

function LogPanel({ executionId }: { executionId: string }) {
  const logs = useInfiniteQuery({
    queryKey: ['execution-logs', executionId],
    queryFn: ({ pageParam }) => executions.logs(executionId, pageParam, LOG_PAGE),
    initialPageParam: null as string | null,
    getNextPageParam: (last) => last.next_cursor,
  });
  const items = logs.data?.pages.flatMap((p) => p.items) ?? [];
  return (
    <div className="space-y-2">
      <ErrorBox error={logs.error} />
      <button className={btnSecondary} onClick={() => logs.refetch()}>Refresh</button>
      <ol className="space-y-1 font-mono text-[11px]" data-testid="event-log">
        {items.map((e) => (
          <li key={e.seq} className="border-b pb-1" data-seq={e.seq}><span className="text-slate-400">#{e.seq}</span> {e.kind}{e.node_id ? ` ${e.node_id}` : ''} <span className="text-slate-500">{JSON.stringify(e.data).slice(0, 160)}</span></li>
        ))}
      </ol>
      {logs.hasNextPage && <button className={btnSecondary} onClick={() => logs.fetchNextPage()}>Load more</button>}
    </div>
  );
}
