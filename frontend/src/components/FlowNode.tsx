import { Handle, Position, type Node, type NodeProps } from '@xyflow/react';
import type { FlowProblem } from '../api/errors';
import type { NodeBody } from '../lib/flowDoc';
import type { NodeStatus } from '../lib/runEvents';

export type FlowNodeData = {
  body: NodeBody;
  problems?: FlowProblem[];
  status?: NodeStatus;
  [key: string]: unknown;
};
export type FlowRFNode = Node<FlowNodeData, 'crewflow'>;

const KIND_STYLE: Record<string, string> = {
  input: 'bg-emerald-600', agent: 'bg-blue-600', crew: 'bg-indigo-600', tool: 'bg-amber-600', router: 'bg-fuchsia-600', output: 'bg-slate-700',
};

export const STATUS_STYLE: Record<NodeStatus, string> = {
  pending: 'border-slate-300 bg-white',
  running: 'border-blue-500 bg-blue-50 animate-pulse',
  retrying: 'border-amber-500 bg-amber-50',
  completed: 'border-green-600 bg-green-50',
  failed: 'border-red-600 bg-red-50',
  skipped: 'border-slate-300 bg-slate-100 opacity-60',
  cancelled: 'border-orange-500 bg-orange-50',
};

function summary(b: NodeBody): string {
  switch (b.kind) {
    case 'agent': return b.agent ? `${b.agent}: ${b.task ?? ''}` : b.task ?? '';
    case 'crew': return b.crew ?? '';
    case 'tool': return b.tool ?? '';
    case 'router': return `${(b.routes ?? []).length} route(s), default ${b.default ?? '—'}`;
    case 'output': return b.value ?? '';
    default: return '';
  }
}

export function FlowNodeView({ id, data }: NodeProps<FlowRFNode>) {
  const b = data.body;
  const problems = data.problems ?? [];
  const status = data.status;
  const border = status ? STATUS_STYLE[status] : problems.length ? 'border-red-500 bg-white' : 'border-slate-300 bg-white';
  return (
    <div
      className={`cf-node w-52 rounded-md border-2 text-xs shadow-sm ${border}`}
      data-testid={`node-${id}`}
      data-kind={b.kind}
      data-status={status ?? ''}
      data-problems={problems.length}
      title={problems.map((p) => `${p.code}: ${p.message}`).join('\n') || undefined}
    >
      {b.kind !== 'input' && <Handle type="target" position={Position.Left} className="!h-3 !w-3 !bg-slate-500" />}
      <div className="flex items-center gap-1 px-2 pt-1.5">
        <span className={`rounded px-1 py-0.5 text-[10px] font-semibold uppercase text-white ${KIND_STYLE[b.kind] ?? 'bg-slate-500'}`}>{b.kind}</span>
        <span className="truncate font-mono font-semibold">{b.label || id}</span>
        {status && <span className="ml-auto text-[10px] text-slate-600">{status}</span>}
        {!status && problems.length > 0 && <span className="ml-auto rounded-full bg-red-600 px-1.5 text-[10px] font-bold text-white">{problems.length}</span>}
      </div>
      <div className="truncate px-2 pb-1.5 pt-0.5 text-slate-600">{summary(b) || '\u00a0'}</div>
      {!status && problems.length > 0 && (
        <div className="border-t border-red-200 bg-red-50 px-2 py-1 text-[10px] text-red-700">{problems[0].message}{problems.length > 1 ? ` (+${problems.length - 1})` : ''}</div>
      )}
      {b.kind !== 'output' && <Handle type="source" position={Position.Right} className="!h-3 !w-3 !bg-slate-500" />}
    </div>
  );
}

export const nodeTypes = { crewflow: FlowNodeView };
