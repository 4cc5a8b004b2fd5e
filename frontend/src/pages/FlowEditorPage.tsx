import '@xyflow/react/dist/style.css';
import { useCallback, useEffect, useMemo, useRef, useState, type DragEvent } from 'react';
import { Link, useLocation, useNavigate, useParams } from 'react-router-dom';
import { useQuery, useQueryClient } from '@tanstack/react-query';
import {
  Background, Controls, MiniMap, ReactFlow, ReactFlowProvider, applyEdgeChanges, applyNodeChanges, useReactFlow,
  type Connection, type Edge, type EdgeChange, type NodeChange,
} from '@xyflow/react';
import { agents as agentsApi, crews as crewsApi, flows as flowsApi, tools as toolsApi, type Agent } from '../api/resources';
import { ApiError, type FlowProblem } from '../api/errors';
import { useSession } from '../auth';
import { nodeTypes, type FlowRFNode } from '../components/FlowNode';
import { ErrorBox, btnPrimary, btnSecondary } from '../components/ui';
import {
  NODE_KINDS, canvasToDoc, docToCanvas, edgeId, freshId, isValidNodeId, layeredLayout, newNodeBody, renameNode,
  type Canvas, type CanvasEdge, type CanvasNode, type FlowDocument, type NodeBody, type NodeKind,
} from '../lib/flowDoc';
import { canRedo, canUndo, createHistory, push, redo, replace, undo, type History } from '../lib/history';
import { problemsByTarget, validateCanvas, type Catalog } from '../lib/validate';
import { Inspector } from './Inspector';
import { RunDialog } from './RunDialog';

type Snapshot = Canvas;

const EMPTY: FlowDocument = { name: 'Untitled flow', nodes: [], edges: [] };

export function FlowEditorPage() {
  const { flowId } = useParams();
  const flow = useQuery({ queryKey: ['flow', flowId], queryFn: () => flowsApi.get(flowId!), enabled: !!flowId, staleTime: Infinity });
  if (flowId && flow.isLoading) return <div className="p-6 text-slate-500">Loading flow…</div>;
  if (flowId && flow.error) return <div className="p-6"><ErrorBox error={flow.error} /></div>;
  // One editor per flow: saving a version keeps the editor (and its undo history) as it is.
  const key = flowId ?? 'new';
  return (
    <ReactFlowProvider>
      <Editor key={key} flowId={flowId ?? null} initialDoc={flow.data?.definition ?? EMPTY} initialVersion={flow.data?.current_version ?? 0} />
    </ReactFlowProvider>
  );
}

function Editor({ flowId, initialDoc, initialVersion }: { flowId: string | null; initialDoc: FlowDocument; initialVersion: number }) {
  const { can } = useSession();
  const editable = can.editFlows;
  const navigate = useNavigate();
  const qc = useQueryClient();
  const rf = useReactFlow();
  const wrapper = useRef<HTMLDivElement>(null);
  const [history, setHistory] = useState<History<Snapshot>>(() => createHistory(docToCanvas(initialDoc)));
  // What was last saved, as the document text: measuring or selecting nodes does not make the flow dirty.
  const [savedJson, setSavedJson] = useState(() => JSON.stringify(canvasToDoc(history.present)));
  const [version, setVersion] = useState(initialVersion);
  const [selNodes, setSelNodes] = useState<Set<string>>(new Set());
  const [selEdges, setSelEdges] = useState<Set<string>>(new Set());
  const [serverProblems, setServerProblems] = useState<FlowProblem[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  const location = useLocation();
  const [notice, setNotice] = useState<string | null>(() => (location.state as { notice?: string } | null)?.notice ?? null);
  const [saving, setSaving] = useState(false);
  const [runOpen, setRunOpen] = useState(false);
  const present = history.present;
  const currentJson = useMemo(() => JSON.stringify(canvasToDoc(present)), [present]);
  const dirty = currentJson !== savedJson;

  const agentsQ = useQuery({ queryKey: ['agents', 'all'], queryFn: agentsApi.all });
  const crewsQ = useQuery({ queryKey: ['crews', 'all'], queryFn: crewsApi.all, retry: false });
  // Tools are readable by admins only: for others the tool reference is left to the server to check.
  const toolsQ = useQuery({ queryKey: ['tools'], queryFn: toolsApi.all, enabled: can.admin, retry: false });
  const catalog: Catalog = useMemo(() => ({
    agents: agentsQ.data?.map((a) => a.id),
    crews: crewsQ.data?.map((c) => c.id),
    tools: toolsQ.data?.filter((t) => t.is_active).map((t) => t.id),
  }), [agentsQ.data, crewsQ.data, toolsQ.data]);

  const clientProblems = useMemo(() => validateCanvas(present, catalog), [present, catalog]);
  const allProblems = useMemo(() => [...clientProblems, ...(serverProblems ?? [])], [clientProblems, serverProblems]);
  const index = useMemo(() => problemsByTarget(allProblems, present.nodes.map((n) => n.id)), [allProblems, present.nodes]);

  const commit = useCallback((next: Snapshot, mergeKey: string | null = null) => {
    setHistory((h) => push(h, next, mergeKey));
    setServerProblems(null);
    setNotice(null);
  }, []);

  // --- React Flow (controlled) -------------------------------------------------------------------
  const rfNodes: FlowRFNode[] = useMemo(() => present.nodes.map((n) => ({
    ...(n as unknown as FlowRFNode),
    selected: selNodes.has(n.id),
    draggable: editable,
    data: { body: n.data.body, problems: index.byNode.get(n.id) },
  })), [present.nodes, selNodes, index, editable]);

  const rfEdges: Edge[] = useMemo(() => {
    const bodies = new Map(present.nodes.map((n) => [n.id, n.data.body]));
    return present.edges.map((e) => {
      const problems = index.byEdge.get(e.id);
      const src = bodies.get(e.source);
      let label: string | undefined;
      if (src?.kind === 'router') {
        const route = src.routes?.find((r) => r.to === e.target);
        label = route ? `when ${route.when}` : src.default === e.target ? 'default' : undefined;
      }
      if (problems?.length) label = `⚠ ${problems[0].message}`;
      return {
        id: e.id, source: e.source, target: e.target, selected: selEdges.has(e.id), label,
        style: problems?.length ? { stroke: '#dc2626', strokeWidth: 2 } : undefined,
        labelStyle: problems?.length ? { fill: '#b91c1c', fontSize: 11 } : { fontSize: 11 },
        data: { problems },
      };
    });
  }, [present.edges, present.nodes, selEdges, index]);

  const onNodesChange = useCallback((changes: NodeChange<FlowRFNode>[]) => {
    const sel = changes.filter((c) => c.type === 'select');
    if (sel.length) {
      setSelNodes((s) => {
        const next = new Set(s);
        for (const c of sel) if (c.type === 'select') (c.selected ? next.add(c.id) : next.delete(c.id));
        return next;
      });
    }
    const rest = changes.filter((c) => c.type !== 'select');
    if (!rest.length) return;
    if (!editable && rest.some((c) => c.type !== 'dimensions')) return;
    setHistory((h) => {
      const nodes = applyNodeChanges(rest, h.present.nodes as unknown as FlowRFNode[]) as unknown as CanvasNode[];
      const removed = new Set(rest.flatMap((c) => (c.type === 'remove' ? [c.id] : [])));
      if (removed.size) {
        const edges = h.present.edges.filter((e) => !removed.has(e.source) && !removed.has(e.target));
        return push(h, { ...h.present, nodes, edges });
      }
      const moves = rest.filter((c) => c.type === 'position');
      if (moves.some((c) => c.type === 'position' && c.dragging)) {
        return push(h, { ...h.present, nodes }, `move:${moves.map((c) => (c as { id: string }).id).join(',')}`);
      }
      if (moves.length) return { ...replace(h, { ...h.present, nodes }), lastKey: null }; // drag ended
      return replace(h, { ...h.present, nodes }); // measured sizes: not an edit
    });
    if (rest.some((c) => c.type === 'remove')) setServerProblems(null);
  }, [editable]);

  const onEdgesChange = useCallback((changes: EdgeChange[]) => {
    const sel = changes.filter((c) => c.type === 'select');
    if (sel.length) {
      setSelEdges((s) => {
        const next = new Set(s);
        for (const c of sel) if (c.type === 'select') (c.selected ? next.add(c.id) : next.delete(c.id));
        return next;
      });
    }
    const removes = changes.filter((c) => c.type === 'remove');
    if (!removes.length || !editable) return;
    setHistory((h) => {
      const edges = applyEdgeChanges(removes, h.present.edges as Edge[]) as CanvasEdge[];
      if (edges.length === h.present.edges.length) return h;
      return push(h, { ...h.present, edges: edges.map(({ id, source, target }) => ({ id, source, target })) });
    });
    setServerProblems(null);
  }, [editable]);

  const onConnect = useCallback((c: Connection) => {
    if (!editable || !c.source || !c.target || c.source === c.target) return;
    const id = edgeId(c.source, c.target);
    if (present.edges.some((e) => e.id === id)) return;
    commit({ ...present, edges: [...present.edges, { id, source: c.source, target: c.target }] });
  }, [present, commit, editable]);

  // --- adding nodes --------------------------------------------------------------------------------
  const addNode = useCallback((kind: NodeKind, position: { x: number; y: number }) => {
    const id = freshId(kind === 'input' ? 'start' : kind === 'output' ? 'result' : kind, present.nodes.map((n) => n.id));
    const node: CanvasNode = { id, type: 'crewflow', position, data: { body: newNodeBody(kind) } };
    commit({ ...present, nodes: [...present.nodes, node] });
    setSelNodes(new Set([id]));
    setSelEdges(new Set());
  }, [present, commit]);

  const onDrop = (e: DragEvent) => {
    e.preventDefault();
    const kind = e.dataTransfer.getData('application/crewflow-kind') as NodeKind;
    if (!editable || !NODE_KINDS.includes(kind)) return;
    const p = rf.screenToFlowPosition({ x: e.clientX, y: e.clientY });
    addNode(kind, { x: p.x - 104, y: p.y - 25 });
  };

  const addAtCentre = (kind: NodeKind) => {
    const r = wrapper.current?.getBoundingClientRect();
    const p = rf.screenToFlowPosition({ x: (r?.left ?? 0) + (r?.width ?? 800) / 2, y: (r?.top ?? 0) + (r?.height ?? 600) / 2 });
    const offset = (present.nodes.length % 5) * 30;
    addNode(kind, { x: p.x - 104 + offset, y: p.y - 25 + offset });
  };

  // --- node edits ----------------------------------------------------------------------------------
  const updateBody = useCallback((id: string, patch: Partial<NodeBody>, field: string) => {
    const nodes = present.nodes.map((n) => (n.id === id ? { ...n, data: { body: { ...n.data.body, ...patch } } } : n));
    commit({ ...present, nodes }, `edit:${id}:${field}`);
  }, [present, commit]);

  const rename = useCallback((from: string, to: string): string | null => {
    if (from === to) return null;
    if (!isValidNodeId(to)) return 'ids use letters, digits, _ and -, and start with a letter or _';
    if (present.nodes.some((n) => n.id === to)) return `'${to}' is taken`;
    const r = renameNode(present, from, to);
    commit({ ...present, nodes: r.nodes, edges: r.edges });
    setSelNodes(new Set([to]));
    return null;
  }, [present, commit]);

  const updateMeta = useCallback((patch: Partial<Canvas['meta']>, field: string) => {
    commit({ ...present, meta: { ...present.meta, ...patch } }, `meta:${field}`);
  }, [present, commit]);

  const deleteSelection = useCallback(() => {
    if (!editable) return;
    const nodes = present.nodes.filter((n) => !selNodes.has(n.id));
    const edges = present.edges.filter((e) => !selEdges.has(e.id) && !selNodes.has(e.source) && !selNodes.has(e.target));
    if (nodes.length === present.nodes.length && edges.length === present.edges.length) return;
    commit({ ...present, nodes, edges });
    setSelNodes(new Set());
    setSelEdges(new Set());
  }, [present, selNodes, selEdges, commit, editable]);

  // Keyboard deletion: one undo step for the nodes and every edge that goes with them (React Flow would
  // report them as two separate changes).
  const onBeforeDelete = useCallback(async ({ nodes, edges }: { nodes: FlowRFNode[]; edges: Edge[] }) => {
    if (!editable) return false;
    const goneNodes = new Set(nodes.map((n) => n.id));
    const goneEdges = new Set(edges.map((e) => e.id));
    setHistory((h) => {
      const keptNodes = h.present.nodes.filter((n) => !goneNodes.has(n.id));
      const keptEdges = h.present.edges.filter((e) => !goneEdges.has(e.id) && !goneNodes.has(e.source) && !goneNodes.has(e.target));
      if (keptNodes.length === h.present.nodes.length && keptEdges.length === h.present.edges.length) return h;
      return push(h, { ...h.present, nodes: keptNodes, edges: keptEdges });
    });
    setSelNodes(new Set());
    setSelEdges(new Set());
    setServerProblems(null);
    return false;
  }, [editable]);

  const autoLayout = () => {
    const pos = layeredLayout(present.nodes.map((n) => n.id), present.edges);
    commit({ ...present, nodes: present.nodes.map((n) => ({ ...n, position: pos[n.id] ?? n.position })) });
    setTimeout(() => rf.fitView({ padding: 0.2, duration: 200 }), 50);
  };

  const doUndo = useCallback(() => { setHistory(undo); setServerProblems(null); }, []);
  const doRedo = useCallback(() => { setHistory(redo); setServerProblems(null); }, []);

  // --- undo / redo keys ----------------------------------------------------------------------------
  useEffect(() => {
    const onKey = (e: KeyboardEvent) => {
      const t = e.target as HTMLElement | null;
      if (t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.tagName === 'SELECT' || t.isContentEditable)) return;
      if (!(e.ctrlKey || e.metaKey) || !editable) return;
      const k = e.key.toLowerCase();
      if (k === 'z' && !e.shiftKey) { e.preventDefault(); doUndo(); }
      else if ((k === 'z' && e.shiftKey) || k === 'y') { e.preventDefault(); doRedo(); }
    };
    window.addEventListener('keydown', onKey);
    return () => window.removeEventListener('keydown', onKey);
  }, [editable, doUndo, doRedo]);

  // --- save / check --------------------------------------------------------------------------------
  const save = async () => {
    setSaving(true);
    setError(null);
    setNotice(null);
    try {
      const doc = canvasToDoc(present);
      const out = flowId ? await flowsApi.save(flowId, doc, version) : await flowsApi.create(doc);
      setSavedJson(JSON.stringify(doc));
      setVersion(out.current_version);
      setServerProblems(null);
      setNotice(`Saved as version ${out.current_version}`);
      qc.invalidateQueries({ queryKey: ['flows'] });
      qc.setQueryData(['flow', out.id], out);
      if (!flowId) navigate(`/flows/${encodeURIComponent(out.id)}`, { replace: true, state: { notice: `Saved as version ${out.current_version}` } });
    } catch (e) {
      if (e instanceof ApiError && e.flowProblems.length) setServerProblems(e.flowProblems);
      if (e instanceof ApiError && e.status === 409) setError(new Error('Someone saved a newer version of this flow meanwhile. Reload it to see their changes (your edits stay here until you leave the page).'));
      else setError(e);
    } finally {
      setSaving(false);
    }
  };

  const checkOnServer = async () => {
    setError(null);
    try {
      const res = await flowsApi.validate(canvasToDoc(present));
      setServerProblems(res.problems);
      setNotice(res.valid ? 'The server finds no problem' : `The server found ${res.problems.length} problem(s)`);
    } catch (e) {
      setError(e);
    }
  };

  const versionsQ = useQuery({
    queryKey: ['flow-versions', flowId, version],
    queryFn: () => flowsApi.versions(flowId!, null),
    enabled: !!flowId,
  });
  const loadVersion = async (v: number) => {
    setError(null);
    try {
      const old = await flowsApi.version(flowId!, v);
      const canvas = docToCanvas(old.definition);
      commit(canvas);
      setSelNodes(new Set());
      setSelEdges(new Set());
      setNotice(editable ? `Loaded version ${v} into the editor: save to make it version ${version + 1} (undo to go back)` : `Showing version ${v}`);
      setTimeout(() => rf.fitView({ padding: 0.2, duration: 200 }), 50);
    } catch (e) {
      setError(e);
    }
  };

  const selectedNode = selNodes.size === 1 ? present.nodes.find((n) => selNodes.has(n.id)) ?? null : null;
  const selectedEdge = !selectedNode && selEdges.size === 1 ? present.edges.find((e) => selEdges.has(e.id)) ?? null : null;

  return (
    <div className="flex h-full flex-col">
      <div className="flex flex-wrap items-center gap-2 border-b bg-white px-3 py-2 text-sm">
        <Link to="/flows" className="text-blue-700 underline">Flows</Link>
        <span className="font-semibold" data-testid="flow-title">{String(present.meta.name ?? flowId ?? 'New flow')}</span>
        <span className="text-slate-500">{flowId ? `v${version}` : 'not saved yet'}{dirty ? ' · unsaved changes' : ''}</span>
        <div className="ml-auto flex flex-wrap items-center gap-2">
          {editable && (
            <>
              <button className={btnSecondary} onClick={doUndo} disabled={!canUndo(history)} title="Ctrl+Z">Undo</button>
              <button className={btnSecondary} onClick={doRedo} disabled={!canRedo(history)} title="Ctrl+Shift+Z">Redo</button>
              <button className={btnSecondary} onClick={deleteSelection} disabled={!selNodes.size && !selEdges.size} title="Delete / Backspace">Delete</button>
              <button className={btnSecondary} onClick={autoLayout}>Auto-layout</button>
            </>
          )}
          <button className={btnSecondary} onClick={() => rf.fitView({ padding: 0.2, duration: 200 })}>Zoom to fit</button>
          {editable && <button className={btnSecondary} onClick={checkOnServer}>Check</button>}
          {editable && <button className={btnPrimary} onClick={save} disabled={saving || (!dirty && !!flowId)} data-testid="save">{saving ? 'Saving…' : 'Save version'}</button>}
          {flowId && (versionsQ.data?.items.length ?? 0) > 1 && (
            <select className="rounded border border-slate-300 px-1 py-1.5 text-sm" value="" aria-label="versions" data-testid="versions"
              onChange={(e) => { const v = Number(e.target.value); if (v) void loadVersion(v); }}>
              <option value="">{editable ? 'Load version…' : 'Versions…'}</option>
              {versionsQ.data!.items.filter((v) => v.version !== version).map((v) => (
                <option key={v.version} value={v.version}>v{v.version} · {new Date(v.created_at * 1000).toLocaleString()}</option>
              ))}
            </select>
          )}
          {flowId && <Link className={btnSecondary} to={`/flows/${encodeURIComponent(flowId)}/executions`}>Executions</Link>}
          {flowId && can.execute && (
            <button className={btnPrimary} onClick={() => setRunOpen(true)} disabled={dirty} title={dirty ? 'Save first: runs use a saved version' : undefined} data-testid="run">Run…</button>
          )}
        </div>
      </div>
      {(error || notice) && (
        <div className="border-b bg-white px-3 py-2">
          {notice && <div className={`text-sm ${serverProblems?.length ? 'text-amber-700' : 'text-green-700'}`} data-testid="notice">{notice}</div>}
          <ErrorBox error={error} />
        </div>
      )}
      <div className="flex min-h-0 flex-1">
        {editable && <Palette onAdd={addAtCentre} />}
        <div className="min-w-0 flex-1" ref={wrapper} onDragOver={(e) => { e.preventDefault(); e.dataTransfer.dropEffect = 'move'; }} onDrop={onDrop} data-testid="canvas">
          <ReactFlow
            nodes={rfNodes}
            edges={rfEdges}
            nodeTypes={nodeTypes}
            onNodesChange={onNodesChange}
            onEdgesChange={onEdgesChange}
            onConnect={onConnect}
            onBeforeDelete={onBeforeDelete}
            nodesConnectable={editable}
            nodesDraggable={editable}
            edgesFocusable
            deleteKeyCode={editable ? ['Delete', 'Backspace'] : null}
            fitView={initialDoc.nodes.length > 0 /* an empty canvas must not re-centre on the first drop */}
            fitViewOptions={{ padding: 0.3, maxZoom: 1.2 }}
            proOptions={{ hideAttribution: true }}
          >
            <Background />
            <Controls showInteractive={false} />
            <MiniMap pannable zoomable nodeColor={(n) => ((n.data as { problems?: unknown[] }).problems?.length ? '#f87171' : '#94a3b8')} />
          </ReactFlow>
        </div>
        <aside className="w-80 shrink-0 overflow-y-auto border-l bg-white p-3" data-testid="inspector">
          <Inspector
            editable={editable}
            canvas={present}
            node={selectedNode}
            edge={selectedEdge}
            agents={agentsQ.data ?? [] as Agent[]}
            crewIds={crewsQ.data?.map((c) => c.id) ?? []}
            toolIds={toolsQ.data?.map((t) => t.id) ?? null}
            index={index}
            allProblems={allProblems}
            onBody={updateBody}
            onRename={rename}
            onMeta={updateMeta}
            onDelete={deleteSelection}
            onSelectNode={(id) => { setSelNodes(new Set([id])); setSelEdges(new Set()); }}
          />
        </aside>
      </div>
      {runOpen && flowId && <RunDialog flowId={flowId} meta={present.meta} onClose={() => setRunOpen(false)} />}
    </div>
  );
}

function Palette({ onAdd }: { onAdd: (kind: NodeKind) => void }) {
  const hint: Record<NodeKind, string> = {
    input: 'the run inputs', agent: 'one task for one agent', crew: 'a CrewAI crew', tool: 'a sandboxed tool', router: 'choose a branch', output: 'a result of the run',
  };
  return (
    <div className="w-40 shrink-0 space-y-2 border-r bg-slate-50 p-2 text-sm" data-testid="palette">
      <div className="text-xs font-semibold uppercase text-slate-500">Drag onto the canvas</div>
      {NODE_KINDS.map((k) => (
        <div
          key={k}
          draggable
          onDragStart={(e) => { e.dataTransfer.setData('application/crewflow-kind', k); e.dataTransfer.effectAllowed = 'move'; }}
          onDoubleClick={() => onAdd(k)}
          className="cursor-grab rounded border border-slate-300 bg-white px-2 py-1 shadow-sm hover:border-blue-400"
          data-testid={`palette-${k}`}
          title="Drag onto the canvas, or double-click to add"
        >
          <div className="font-medium">{k}</div>
          <div className="text-xs text-slate-500">{hint[k]}</div>
        </div>
      ))}
    </div>
  );
}
