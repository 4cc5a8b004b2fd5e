import { useEffect, useState } from 'react';
import type { FlowProblem } from '../api/errors';
import type { Agent } from '../api/resources';
import { Field, btnDanger, btnSecondary, inputCls } from '../components/ui';
import { inputSpecs, type Canvas, type CanvasEdge, type CanvasNode, type InputSpec, type NodeBody, type Route } from '../lib/flowDoc';
import type { ProblemIndex } from '../lib/validate';

interface Props {
  editable: boolean;
  canvas: Canvas;
  node: CanvasNode | null;
  edge: CanvasEdge | null;
  agents: Agent[];
  crewIds: string[];
  /** null when the caller may not list tools (not an admin). */
  toolIds: string[] | null;
  index: ProblemIndex;
  allProblems: FlowProblem[];
  onBody: (id: string, patch: Partial<NodeBody>, field: string) => void;
  onRename: (from: string, to: string) => string | null;
  onMeta: (patch: Partial<Canvas['meta']>, field: string) => void;
  onDelete: () => void;
  onSelectNode: (id: string) => void;
}

export function Inspector(p: Props) {
  if (p.node) return <NodeInspector {...p} node={p.node} />;
  if (p.edge) {
    const problems = p.index.byEdge.get(p.edge.id) ?? [];
    return (
      <div className="space-y-3 text-sm">
        <h2 className="font-semibold">Edge {p.edge.source} → {p.edge.target}</h2>
        <Problems problems={problems} />
        {p.editable && <button className={btnDanger} onClick={p.onDelete}>Delete edge</button>}
      </div>
    );
  }
  return <FlowInspector {...p} />;
}

function Problems({ problems, onSelectNode }: { problems: FlowProblem[]; onSelectNode?: (id: string) => void }) {
  if (!problems.length) return <div className="text-xs text-green-700">No problems found.</div>;
  return (
    <ul className="space-y-1" data-testid="problems">
      {problems.map((pr, i) => (
        <li key={i} className="rounded border border-red-200 bg-red-50 p-1.5 text-xs text-red-800">
          <span className="font-mono">{pr.code}</span> · {pr.where}: {pr.message}
          {onSelectNode && pr.nodes.length > 0 && (
            <span className="ml-1">{pr.nodes.map((n) => <button key={n} className="ml-1 underline" onClick={() => onSelectNode(n)}>{n}</button>)}</span>
          )}
        </li>
      ))}
    </ul>
  );
}

/** A text input that edits locally and reports on each keystroke (merged into one undo step). */
function Text({ value, onChange, disabled, multiline, name, placeholder }: { value: string; onChange: (v: string) => void; disabled?: boolean; multiline?: boolean; name?: string; placeholder?: string }) {
  return multiline
    ? <textarea name={name} className={`${inputCls} font-mono`} rows={4} value={value} disabled={disabled} placeholder={placeholder} onChange={(e) => onChange(e.target.value)} />
    : <input name={name} className={inputCls} value={value} disabled={disabled} placeholder={placeholder} onChange={(e) => onChange(e.target.value)} />;
}

function NodeInspector(p: Props & { node: CanvasNode }) {
  const { node, editable } = p;
  const b = node.data.body;
  const [idDraft, setIdDraft] = useState(node.id);
  const [idError, setIdError] = useState<string | null>(null);
  useEffect(() => { setIdDraft(node.id); setIdError(null); }, [node.id]);
  const set = (field: keyof NodeBody) => (v: unknown) => p.onBody(node.id, { [field]: v } as Partial<NodeBody>, String(field));
  const children = p.canvas.edges.filter((e) => e.source === node.id).map((e) => e.target);
  const problems = p.index.byNode.get(node.id) ?? [];
  return (
    <div className="space-y-3 text-sm">
      <h2 className="font-semibold"><span className="uppercase text-slate-500">{b.kind}</span> node</h2>
      <Field label="Id" hint="referenced by edges and templates: {{ nodes.ID.output }}">
        <input name="node-id" className={inputCls} value={idDraft} disabled={!editable}
          onChange={(e) => setIdDraft(e.target.value)}
          onBlur={() => setIdError(p.onRename(node.id, idDraft.trim()))}
          onKeyDown={(e) => { if (e.key === 'Enter') (e.target as HTMLInputElement).blur(); }} />
      </Field>
      {idError && <div className="text-xs text-red-700">{idError}</div>}
      <Field label="Label (optional)"><Text name="label" value={b.label ?? ''} onChange={set('label')} disabled={!editable} /></Field>

      {b.kind === 'agent' && (
        <>
          <Field label="Agent">
            <select name="agent" className={inputCls} value={b.agent ?? ''} disabled={!editable} onChange={(e) => set('agent')(e.target.value || null)}>
              <option value="">— choose an agent —</option>
              {p.agents.map((a) => <option key={a.id} value={a.id}>{a.id} ({a.role})</option>)}
              {Object.keys(p.canvas.meta.agents ?? {}).filter((id) => !p.agents.some((a) => a.id === id)).map((id) => <option key={id} value={id}>{id} (in this flow)</option>)}
              {b.agent && !p.agents.some((a) => a.id === b.agent) && !Object.keys(p.canvas.meta.agents ?? {}).includes(b.agent) && <option value={b.agent}>{b.agent} (unknown)</option>}
            </select>
          </Field>
          <Field label="Task" hint="templates: {{ inputs.topic }}, {{ nodes.other.output }}"><Text name="task" multiline value={b.task ?? ''} onChange={set('task')} disabled={!editable} /></Field>
          <Field label="Expected output (optional)"><Text name="expected_output" value={b.expected_output ?? ''} onChange={set('expected_output')} disabled={!editable} /></Field>
        </>
      )}
      {b.kind === 'crew' && (
        <>
          <Field label="Crew">
            <select name="crew" className={inputCls} value={b.crew ?? ''} disabled={!editable} onChange={(e) => set('crew')(e.target.value || null)}>
              <option value="">— choose a crew —</option>
              {[...new Set([...p.crewIds, ...Object.keys(p.canvas.meta.crews ?? {}), ...(b.crew ? [b.crew] : [])])].map((id) => <option key={id} value={id}>{id}</option>)}
            </select>
          </Field>
          <MappingEditor label="Inputs (name → template)" value={b.inputs ?? {}} onChange={set('inputs')} disabled={!editable} />
        </>
      )}
      {b.kind === 'tool' && (
        <>
          {p.toolIds ? (
            <Field label="Tool">
              <select name="tool" className={inputCls} value={b.tool ?? ''} disabled={!editable} onChange={(e) => set('tool')(e.target.value || null)}>
                <option value="">— choose a tool —</option>
                {[...new Set([...p.toolIds, ...Object.keys(p.canvas.meta.tools ?? {}), ...(b.tool ? [b.tool] : [])])].map((id) => <option key={id} value={id}>{id}</option>)}
              </select>
            </Field>
          ) : (
            <Field label="Tool id"><Text name="tool" value={b.tool ?? ''} onChange={(v) => set('tool')(v || null)} disabled={!editable} /></Field>
          )}
          <MappingEditor label="Inputs (name → template)" value={b.inputs ?? {}} onChange={set('inputs')} disabled={!editable} />
        </>
      )}
      {b.kind === 'router' && (
        <RouterEditor routes={b.routes ?? []} fallback={b.default ?? null} targets={children} disabled={!editable}
          onRoutes={set('routes')} onDefault={set('default')} />
      )}
      {b.kind === 'output' && (
        <Field label="Value (optional)" hint="empty: the only parent's output, else all parents' outputs"><Text name="value" multiline value={b.value ?? ''} onChange={(v) => set('value')(v === '' ? null : v)} disabled={!editable} /></Field>
      )}
      {b.kind !== 'input' && b.kind !== 'output' && (
        <div className="grid grid-cols-2 gap-2">
          <Field label="Attempts"><input name="max_attempts" type="number" min={1} max={20} className={inputCls} disabled={!editable} value={b.retry?.max_attempts ?? 1}
            onChange={(e) => { const n = Number(e.target.value); set('retry')(n > 1 ? { ...(b.retry ?? {}), max_attempts: n } : undefined); }} /></Field>
          <Field label="Timeout (s)"><input name="timeout" type="number" min={1} className={inputCls} disabled={!editable} value={b.timeout ?? ''}
            onChange={(e) => set('timeout')(e.target.value === '' ? null : Number(e.target.value))} /></Field>
        </div>
      )}
      <div>
        <div className="mb-1 font-medium">Problems</div>
        <Problems problems={problems} />
      </div>
      {editable && <button className={btnDanger} onClick={p.onDelete}>Delete node</button>}
    </div>
  );
}

function MappingEditor({ label, value, onChange, disabled }: { label: string; value: Record<string, string>; onChange: (v: Record<string, string>) => void; disabled?: boolean }) {
  const rows = Object.entries(value);
  const update = (i: number, k: string, v: string) => onChange(Object.fromEntries(rows.map((r, j) => (j === i ? [k, v] : r))));
  return (
    <div>
      <div className="mb-1 font-medium">{label}</div>
      {rows.map(([k, v], i) => (
        <div key={i} className="mb-1 flex gap-1">
          <input className={`${inputCls} w-24`} value={k} disabled={disabled} onChange={(e) => update(i, e.target.value, v)} />
          <input className={inputCls} value={v} disabled={disabled} onChange={(e) => update(i, k, e.target.value)} />
          {!disabled && <button className="text-red-600" onClick={() => onChange(Object.fromEntries(rows.filter((_, j) => j !== i)))}>✕</button>}
        </div>
      ))}
      {!disabled && <button className={btnSecondary} onClick={() => onChange({ ...value, [`input${rows.length + 1}`]: '' })}>Add input</button>}
    </div>
  );
}

function RouterEditor({ routes, fallback, targets: children, disabled, onRoutes, onDefault }: {
  routes: Route[]; fallback: string | null; targets: string[]; disabled: boolean;
  onRoutes: (r: Route[]) => void; onDefault: (d: string | null) => void;
}) {
  const options = [...new Set([...children, ...routes.map((r) => r.to).filter(Boolean), ...(fallback ? [fallback] : [])])];
  return (
    <div className="space-y-2">
      <div className="font-medium">Routes <span className="text-xs font-normal text-slate-500">(first true condition wins; connect an edge to each target)</span></div>
      {routes.map((r, i) => (
        <div key={i} className="space-y-1 rounded border border-slate-200 p-1.5">
          <input name={`route-${i}-when`} className={`${inputCls} font-mono`} placeholder="len(nodes.x.output) > 100" value={r.when} disabled={disabled}
            onChange={(e) => onRoutes(routes.map((x, j) => (j === i ? { ...x, when: e.target.value } : x)))} />
          <div className="flex gap-1">
            <select name={`route-${i}-to`} className={inputCls} value={r.to} disabled={disabled} onChange={(e) => onRoutes(routes.map((x, j) => (j === i ? { ...x, to: e.target.value } : x)))}>
              <option value="">— to —</option>
              {options.map((o) => <option key={o} value={o}>{o}</option>)}
            </select>
            {!disabled && <button className="text-red-600" onClick={() => onRoutes(routes.filter((_, j) => j !== i))}>✕</button>}
          </div>
        </div>
      ))}
      {!disabled && <button className={btnSecondary} onClick={() => onRoutes([...routes, { when: '', to: children.find((c) => !routes.some((r) => r.to === c)) ?? '' }])}>Add route</button>}
      <Field label="Default branch">
        <select name="default" className={inputCls} value={fallback ?? ''} disabled={disabled} onChange={(e) => onDefault(e.target.value || null)}>
          <option value="">— none —</option>
          {options.map((o) => <option key={o} value={o}>{o}</option>)}
        </select>
      </Field>
    </div>
  );
}

function FlowInspector(p: Props) {
  const meta = p.canvas.meta;
  const specs = inputSpecs(meta.inputs);
  const setSpecs = (next: InputSpec[]) => p.onMeta({ inputs: next.map((s) => ({ name: s.name, description: s.description ?? '', default: s.default ?? null, required: !!s.required })) }, 'inputs');
  return (
    <div className="space-y-3 text-sm">
      <h2 className="font-semibold">Flow</h2>
      <Field label="Name"><Text name="flow-name" value={String(meta.name ?? '')} onChange={(v) => p.onMeta({ name: v }, 'name')} disabled={!p.editable} /></Field>
      <Field label="Description"><Text name="flow-description" value={String(meta.description ?? '')} onChange={(v) => p.onMeta({ description: v }, 'description')} disabled={!p.editable} /></Field>
      <div>
        <div className="mb-1 font-medium">Inputs</div>
        {specs.map((s, i) => (
          <div key={i} className="mb-1 flex gap-1">
            <input className={`${inputCls} w-24`} placeholder="name" value={s.name} disabled={!p.editable} onChange={(e) => setSpecs(specs.map((x, j) => (j === i ? { ...x, name: e.target.value } : x)))} />
            <input className={inputCls} placeholder="default" value={s.default == null ? '' : String(s.default)} disabled={!p.editable} onChange={(e) => setSpecs(specs.map((x, j) => (j === i ? { ...x, default: e.target.value } : x)))} />
            {p.editable && <button className="text-red-600" onClick={() => setSpecs(specs.filter((_, j) => j !== i))}>✕</button>}
          </div>
        ))}
        {p.editable && <button className={btnSecondary} onClick={() => setSpecs([...specs, { name: `input${specs.length + 1}`, default: '' }])}>Add input</button>}
      </div>
      <div>
        <div className="mb-1 font-medium">Problems ({p.allProblems.length})</div>
        <Problems problems={p.allProblems} onSelectNode={p.onSelectNode} />
      </div>
      <p className="text-xs text-slate-500">Select a node or edge to edit it. Drag from a node's right handle to another node's left handle to connect them. Delete/Backspace removes the selection; Ctrl+Z / Ctrl+Shift+Z undo and redo.</p>
    </div>
  );
}
