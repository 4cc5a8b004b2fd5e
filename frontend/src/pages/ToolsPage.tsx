import { Fragment, useEffect, useRef, useState, type FormEvent } from 'react';
import { useMutation, useQuery, useQueryClient } from '@tanstack/react-query';
import { tools, type Tool, type ToolStatus, type ToolTestResult } from '../api/resources';
import { useSession } from '../auth';
import { ErrorBox, Field, Page, StatusBadge, btnDanger, btnPrimary, btnSecondary, inputCls, when } from '../components/ui';
import {
  DEFAULT_DOCKERFILE, INPUT_SCHEMA_EXAMPLE, OUTPUT_SCHEMA_EXAMPLE, WORDCOUNT_SCRIPT, CONTEXT_FILE,
  isBuildInProgress, parseJsonObject, sampleInputText, toolBody, toolSource, type ToolFormState, type ToolKind,
} from '../lib/toolForm';

type Panel = { id: string; view: 'status' | 'test' } | null;

export function ToolsPage() {
  const { can } = useSession();
  if (can.admin) return <AdminTools />;
  if (can.execute) {
    // Members may try a tool (flows:execute) but not list or register tools (tools:read/write are admin-only).
    return (
      <Page title="Tools">
        <p className="mb-3 text-sm text-slate-600">Only admins register and list tools; you may try one by its name.</p>
        <ToolTestForm tool={null} />
      </Page>
    );
  }
  return <Page title="Tools"><p className="text-sm text-slate-600">Only admins register tools.</p></Page>;
}

function AdminTools() {
  const qc = useQueryClient();
  const list = useQuery({ queryKey: ['tools'], queryFn: tools.all });
  const [creating, setCreating] = useState(false);
  const [panel, setPanel] = useState<Panel>(null);
  const remove = useMutation({ mutationFn: (id: string) => tools.remove(id), onSuccess: () => qc.invalidateQueries({ queryKey: ['tools'] }) });
  const build = useMutation({
    mutationFn: ({ id, rebuild }: { id: string; rebuild: boolean }) => (rebuild ? tools.rebuild(id) : tools.build(id)),
    onMutate: ({ id }) => setPanel({ id, view: 'status' }),
    onSuccess: (status) => {
      qc.setQueryData(['tools', status.id, 'status'], status);
      qc.invalidateQueries({ queryKey: ['tools'] });
    },
  });
  const toggle = (id: string, view: 'status' | 'test') =>
    setPanel((p) => (p && p.id === id && p.view === view ? null : { id, view }));
  return (
    <Page title="Tools" actions={<button className={btnPrimary} onClick={() => setCreating(true)}>Register tool</button>}>
      <ErrorBox error={list.error ?? remove.error} />
      {creating && <ToolForm onDone={() => setCreating(false)} />}
      <table className="w-full border-collapse bg-white text-sm" data-testid="tools-table">
        <thead><tr className="border-b text-left text-slate-600"><th className="p-2">Name</th><th className="p-2">Description</th><th className="p-2">Source</th><th className="p-2">Build</th><th className="p-2">Version</th><th className="p-2" /></tr></thead>
        <tbody>
          {(list.data ?? []).map((t) => (
            <Fragment key={t.id}>
              <tr className="border-b align-top" data-testid={`tool-${t.id}`}>
                <td className="p-2 font-mono">{t.name}</td>
                <td className="p-2">{t.description}</td>
                <td className="p-2 text-xs">{toolSource(t)}</td>
                <td className="p-2"><StatusBadge status={t.build_status} /></td>
                <td className="p-2">v{t.version}{t.is_active ? '' : ' (inactive)'}</td>
                <td className="whitespace-nowrap p-2 text-right">
                  {t.dockerfile && (
                    <>
                      {!isBuildInProgress(t.build_status) && t.build_status !== 'ready' && (
                        <button className={btnSecondary} disabled={build.isPending} onClick={() => build.mutate({ id: t.id, rebuild: false })}>Build</button>
                      )}{' '}
                      {(t.build_status !== 'registered') && (
                        <button className={btnSecondary} disabled={build.isPending} onClick={() => build.mutate({ id: t.id, rebuild: true })}>Rebuild</button>
                      )}{' '}
                    </>
                  )}
                  <button className={btnSecondary} onClick={() => toggle(t.id, 'status')}>Status</button>{' '}
                  <button className={btnSecondary} onClick={() => toggle(t.id, 'test')}>Test</button>{' '}
                  <button className={btnDanger} onClick={() => { if (confirm(`Delete tool ${t.name}?`)) remove.mutate(t.id); }}>Delete</button>
                </td>
              </tr>
              {panel?.id === t.id && (
                <tr className="border-b bg-slate-50">
                  <td className="p-3" colSpan={6}>
                    {panel.view === 'status'
                      ? <ToolStatusView tool={t} buildError={build.variables?.id === t.id ? build.error : null} />
                      : <ToolTestForm tool={t} />}
                  </td>
                </tr>
              )}
            </Fragment>
          ))}
          {!list.isLoading && !list.data?.length && <tr><td className="p-4 text-slate-500" colSpan={6}>No tools registered.</td></tr>}
        </tbody>
      </table>
    </Page>
  );
}

/** The build status, polled about every second while the build is queued or building. */
function ToolStatusView({ tool, buildError }: { tool: Tool; buildError: unknown }) {
  const qc = useQueryClient();
  const q = useQuery({
    queryKey: ['tools', tool.id, 'status'],
    queryFn: () => tools.status(tool.id, 50),
    refetchInterval: (query) => (isBuildInProgress(query.state.data?.build_status) ? 1000 : false),
  });
  const s: ToolStatus | undefined = q.data;
  // When a build finishes, the table's badge (and Build/Rebuild buttons) follow.
  const last = useRef<string | undefined>(undefined);
  const logRef = useRef<HTMLPreElement>(null);
  useEffect(() => {
    // Follow the log's end while new lines come in.
    if (logRef.current) logRef.current.scrollTop = logRef.current.scrollHeight;
  }, [s?.log_tail.length, s?.log_tail[s.log_tail.length - 1]]);
  useEffect(() => {
    const now = s?.build_status;
    if (last.current !== undefined && now !== last.current) qc.invalidateQueries({ queryKey: ['tools'], exact: true });
    last.current = now;
  }, [s?.build_status, qc]);
  return (
    <div className="space-y-2" data-testid="tool-status">
      <ErrorBox error={buildError ?? q.error} />
      {s && (
        <>
          <div className="flex flex-wrap items-center gap-3 text-sm">
            <StatusBadge status={s.build_status} />
            <span>v{s.version}</span>
            <span>image: <span className="font-mono" data-testid="tool-image">{s.image ?? '—'}</span></span>
            <span>built: {when(s.built_at)}</span>
            {isBuildInProgress(s.build_status) && <span className="text-slate-500">watching the build…</span>}
          </div>
          {s.build_error && <div className="rounded border border-red-300 bg-red-50 p-2 text-sm text-red-800" data-testid="build-error">{s.build_error}</div>}
          {s.log_tail.length > 0
            ? <pre ref={logRef} className="max-h-72 overflow-auto rounded bg-slate-900 p-2 text-xs text-slate-100" data-testid="build-log">{s.log_tail.join('\n')}</pre>
            : <p className="text-xs text-slate-500">No build log{tool.dockerfile ? ' yet' : ' (this tool needs no build)'}.</p>}
        </>
      )}
    </div>
  );
}

/** One test run: a JSON input (prefilled from the input schema), then output, logs and duration. */
function ToolTestForm({ tool }: { tool: Tool | null }) {
  const [name, setName] = useState('');
  const [text, setText] = useState(() => (tool ? sampleInputText(tool.input_schema) : '{}'));
  const run = useMutation({
    mutationFn: (): Promise<ToolTestResult> => {
      let input: unknown;
      try {
        input = JSON.parse(text);
      } catch (e) {
        throw new Error(`input: ${(e as Error).message}`);
      }
      return tools.test(tool ? tool.id : name.trim(), input);
    },
  });
  const submit = (e: FormEvent) => { e.preventDefault(); run.mutate(); };
  const r = run.data;
  return (
    <form onSubmit={submit} className="grid grid-cols-2 gap-3 rounded border border-slate-200 bg-white p-4" data-testid="tool-test-form">
      <div className="space-y-3">
        {!tool && <Field label="Tool name"><input name="tool" className={inputCls} value={name} onChange={(e) => setName(e.target.value)} required /></Field>}
        <Field label={tool ? `Input for ${tool.name} (JSON)` : 'Input (JSON)'} hint="checked against the tool's input schema">
          <textarea name="input" className={`${inputCls} font-mono`} rows={6} value={text} onChange={(e) => setText(e.target.value)} />
        </Field>
        <button className={btnPrimary} disabled={run.isPending}>{run.isPending ? 'Running…' : 'Run test'}</button>
      </div>
      <div className="space-y-2 text-sm" data-testid="tool-test-result">
        <ErrorBox error={run.error} />
        {r && (
          <>
            <div className="flex items-center gap-2">
              <StatusBadge status={r.ok ? 'completed' : 'failed'} />
              <span className="text-slate-600">{(r.duration * 1000).toFixed(0)} ms</span>
            </div>
            {r.error && <div className="rounded border border-red-300 bg-red-50 p-2 text-red-800" data-testid="test-error">{r.error}</div>}
            <div>
              <div className="font-medium text-slate-700">Output</div>
              <pre className="max-h-48 overflow-auto rounded bg-slate-100 p-2 text-xs" data-testid="test-output">{JSON.stringify(r.output, null, 2)}</pre>
            </div>
            {r.logs.length > 0 && (
              <div>
                <div className="font-medium text-slate-700">Logs</div>
                <pre className="max-h-48 overflow-auto rounded bg-slate-900 p-2 text-xs text-slate-100" data-testid="test-logs">{r.logs.join('\n')}</pre>
              </div>
            )}
          </>
        )}
      </div>
    </form>
  );
}

const KINDS: Array<[ToolKind, string]> = [['script', 'Python script'], ['dockerfile', 'Dockerfile'], ['image', 'Image']];

function ToolForm({ onDone }: { onDone: () => void }) {
  const qc = useQueryClient();
  const [f, setF] = useState<ToolFormState>({
    kind: 'script', name: '', description: '', script: WORDCOUNT_SCRIPT, dockerfile: DEFAULT_DOCKERFILE,
    contextFile: WORDCOUNT_SCRIPT, image: '', input: INPUT_SCHEMA_EXAMPLE, output: OUTPUT_SCHEMA_EXAMPLE,
  });
  const set = (k: keyof ToolFormState) => (e: { target: { value: string } }) => setF({ ...f, [k]: e.target.value });
  const save = useMutation({
    mutationFn: () => tools.create(toolBody(f)),
    onSuccess: () => { qc.invalidateQueries({ queryKey: ['tools'] }); onDone(); },
  });
  const submit = (e: FormEvent) => { e.preventDefault(); save.mutate(); };
  const schemaHint = (label: string, text: string) => {
    try { parseJsonObject(label, text); return undefined; } catch (e) { return (e as Error).message; }
  };
  return (
    <form onSubmit={submit} className="mb-4 grid grid-cols-2 gap-3 rounded border border-slate-200 bg-white p-4" data-testid="tool-form">
      <Field label="Name (the tool's id)"><input name="name" className={inputCls} value={f.name} onChange={set('name')} required /></Field>
      <Field label="Description"><input name="description" className={inputCls} value={f.description} onChange={set('description')} /></Field>
      <div className="col-span-2 flex gap-4 text-sm" role="radiogroup" aria-label="What the tool runs">
        {KINDS.map(([k, label]) => (
          <label key={k}><input type="radio" name="kind" value={k} checked={f.kind === k} onChange={() => setF({ ...f, kind: k })} /> {label}</label>
        ))}
      </div>
      {f.kind === 'script' && (
        <div className="col-span-2">
          <Field label="Python script" hint="reads one JSON document on stdin and prints one JSON document on stdout; needs no build">
            <textarea name="script" className={`${inputCls} font-mono`} rows={7} value={f.script} onChange={set('script')} />
          </Field>
        </div>
      )}
      {f.kind === 'dockerfile' && (
        <>
          <Field label="Dockerfile" hint="built into an image with Build once registered">
            <textarea name="dockerfile" className={`${inputCls} font-mono`} rows={7} value={f.dockerfile} onChange={set('dockerfile')} />
          </Field>
          <Field label={`Context file ${CONTEXT_FILE}`} hint="sent with the Dockerfile as its build context (empty: none)">
            <textarea name="context" className={`${inputCls} font-mono`} rows={7} value={f.contextFile} onChange={set('contextFile')} />
          </Field>
        </>
      )}
      {f.kind === 'image' && (
        <div className="col-span-2">
          <Field label="Image" hint="a prebuilt image; needs no build"><input name="image" className={inputCls} value={f.image} onChange={set('image')} placeholder="ghcr.io/acme/wordcount:1" required /></Field>
        </div>
      )}
      <Field label="Input JSON Schema" hint={schemaHint('not valid yet', f.input)}><textarea name="input_schema" className={`${inputCls} font-mono`} rows={6} value={f.input} onChange={set('input')} /></Field>
      <Field label="Output JSON Schema" hint={schemaHint('not valid yet', f.output)}><textarea name="output_schema" className={`${inputCls} font-mono`} rows={6} value={f.output} onChange={set('output')} /></Field>
      <div className="col-span-2"><ErrorBox error={save.error} /></div>
      <div className="col-span-2 flex gap-2"><button className={btnPrimary} disabled={save.isPending}>Register</button><button type="button" className={btnSecondary} onClick={onDone}>Cancel</button></div>
    </form>
  );
}
