import { useEffect, useState, type DragEvent, type FormEvent } from 'react';
import { useMutation, useQuery, useQueryClient } from '@tanstack/react-query';
import { PROVIDER_KINDS, providers, type Provider, type ProviderIn, type ProviderKind } from '../api/resources';
import { useSession } from '../auth';
import { ErrorBox, Field, Page, btnDanger, btnPrimary, btnSecondary, inputCls } from '../components/ui';
import { moveItem } from '../lib/reorder';

export function ProvidersPage() {
  const { can } = useSession();
  const qc = useQueryClient();
  const list = useQuery({ queryKey: ['providers'], queryFn: providers.all, enabled: can.admin });
  const [order, setOrder] = useState<Provider[]>([]);
  const [dragFrom, setDragFrom] = useState<number | null>(null);
  const [editing, setEditing] = useState<Provider | 'new' | null>(null);
  useEffect(() => { if (list.data) setOrder(list.data); }, [list.data]);
  const reorder = useMutation({
    mutationFn: (ids: string[]) => providers.reorder(ids),
    // A list refetch still in flight must not put the old order back over the new one.
    onMutate: () => qc.cancelQueries({ queryKey: ['providers'] }),
    onSuccess: (saved) => { qc.setQueryData(['providers'], saved); },
    onError: () => { if (list.data) setOrder(list.data); },
  });
  const remove = useMutation({ mutationFn: (id: string) => providers.remove(id), onSuccess: () => qc.invalidateQueries({ queryKey: ['providers'] }) });
  if (!can.admin) return <Page title="LLM providers"><p className="text-sm text-slate-600">Only admins manage LLM providers.</p></Page>;
  const move = (from: number, to: number) => {
    const next = moveItem(order, from, to);
    setOrder(next);
    reorder.mutate(next.map((p) => p.id));
  };
  // The dragged row's index travels in the drag data (a drop can come before React re-renders).
  const startDrag = (e: DragEvent, i: number) => {
    e.dataTransfer.setData('text/x-crewflow-provider', String(i));
    e.dataTransfer.effectAllowed = 'move';
    setDragFrom(i);
  };
  const drop = (e: DragEvent, to: number) => {
    e.preventDefault();
    const raw = e.dataTransfer.getData('text/x-crewflow-provider');
    const from = raw === '' ? dragFrom : Number(raw);
    setDragFrom(null);
    if (from === null || !Number.isInteger(from) || from === to) return;
    const next = moveItem(order, from, to);
    setOrder(next);
    reorder.mutate(next.map((p) => p.id));
  };
  return (
    <Page title="LLM providers" actions={<button className={btnPrimary} onClick={() => setEditing('new')}>New provider</button>}>
      <p className="mb-3 text-sm text-slate-600">Calls go to the first active provider; on rate limits, timeouts and server errors the gateway fails over down this list. Drag rows to change the order.</p>
      <ErrorBox error={list.error ?? reorder.error ?? remove.error} />
      {editing && <ProviderForm provider={editing === 'new' ? null : editing} onDone={() => setEditing(null)} />}
      <table className="w-full border-collapse bg-white text-sm" data-testid="providers-table">
        <thead><tr className="border-b text-left text-slate-600"><th className="p-2" /><th className="p-2">#</th><th className="p-2">Name</th><th className="p-2">Kind · model</th><th className="p-2">Key</th><th className="p-2">Price in/out per 1K</th><th className="p-2">Budget</th><th className="p-2">Active</th><th className="p-2" /></tr></thead>
        <tbody>
          {order.map((p, i) => (
            <tr key={p.id} draggable onDragStart={(e) => startDrag(e, i)} onDragEnd={() => setDragFrom(null)} onDragOver={(e) => e.preventDefault()} onDrop={(e) => drop(e, i)}
              className={`border-b ${dragFrom === i ? 'opacity-50' : ''}`} data-testid={`provider-${p.name}`}>
              <td className="cursor-grab whitespace-nowrap p-2 text-slate-400" title="drag to reorder">⠿
                <button className="ml-1 text-xs disabled:opacity-30" aria-label={`move ${p.name} up`} disabled={i === 0} onClick={() => move(i, i - 1)}>▲</button>
                <button className="text-xs disabled:opacity-30" aria-label={`move ${p.name} down`} disabled={i === order.length - 1} onClick={() => move(i, i + 1)}>▼</button>
              </td>
              <td className="p-2">{i + 1}</td>
              <td className="p-2 font-medium">{p.name}</td>
              <td className="p-2">{p.kind} · {p.model}{p.base_url ? <div className="text-xs text-slate-500">{p.base_url}</div> : null}</td>
              <td className="p-2 font-mono text-xs">{p.has_key ? p.api_key ?? 'set' : <span className="text-slate-400">none</span>}</td>
              <td className="p-2">${p.price_input_per_1k} / ${p.price_output_per_1k}</td>
              <td className="p-2">{p.budget == null ? '—' : `$${p.budget}`}</td>
              <td className="p-2">{p.is_active ? 'yes' : 'no'}</td>
              <td className="whitespace-nowrap p-2 text-right">
                <button className={btnSecondary} onClick={() => setEditing(p)}>Edit</button>{' '}
                <button className={btnDanger} onClick={() => { if (confirm(`Delete provider ${p.name}?`)) remove.mutate(p.id); }}>Delete</button>
              </td>
            </tr>
          ))}
          {!list.isLoading && order.length === 0 && <tr><td className="p-4 text-slate-500" colSpan={9}>No providers: agents use the built-in offline 'scripted' provider.</td></tr>}
        </tbody>
      </table>
    </Page>
  );
}

function ProviderForm({ provider, onDone }: { provider: Provider | null; onDone: () => void }) {
  const qc = useQueryClient();
  const [f, setF] = useState({
    name: provider?.name ?? '', kind: (provider?.kind ?? 'openai') as ProviderKind, model: provider?.model ?? '',
    base_url: provider?.base_url ?? '', api_key: '', remove_key: false,
    price_in: String(provider?.price_input_per_1k ?? 0), price_out: String(provider?.price_output_per_1k ?? 0),
    budget: provider?.budget == null ? '' : String(provider.budget), is_active: provider?.is_active ?? true,
  });
  const save = useMutation({
    mutationFn: async () => {
      const body: Partial<ProviderIn> = {
        name: f.name, kind: f.kind, model: f.model, base_url: f.base_url.trim() || null,
        price_input_per_1k: Number(f.price_in) || 0, price_output_per_1k: Number(f.price_out) || 0,
        budget: f.budget === '' ? null : Number(f.budget), is_active: f.is_active,
      };
      // The key is write-only: sent only when typed (or "" to remove it); never shown again.
      if (f.api_key) body.api_key = f.api_key;
      else if (provider && f.remove_key) body.api_key = '';
      return provider ? providers.update(provider.id, body) : providers.create(body as ProviderIn);
    },
    onSuccess: () => { qc.invalidateQueries({ queryKey: ['providers'] }); onDone(); },
  });
  const submit = (e: FormEvent) => { e.preventDefault(); save.mutate(); };
  return (
    <form onSubmit={submit} className="mb-4 grid grid-cols-3 gap-3 rounded border border-slate-200 bg-white p-4" data-testid="provider-form">
      <h2 className="col-span-3 font-semibold">{provider ? `Edit ${provider.name}` : 'New provider'}</h2>
      <Field label="Name"><input name="name" className={inputCls} value={f.name} onChange={(e) => setF({ ...f, name: e.target.value })} required /></Field>
      <Field label="Kind"><select name="kind" className={inputCls} value={f.kind} onChange={(e) => setF({ ...f, kind: e.target.value as ProviderKind })}>{PROVIDER_KINDS.map((k) => <option key={k}>{k}</option>)}</select></Field>
      <Field label="Model"><input name="model" className={inputCls} value={f.model} onChange={(e) => setF({ ...f, model: e.target.value })} required /></Field>
      <Field label="Base URL (optional)"><input name="base_url" className={inputCls} value={f.base_url} onChange={(e) => setF({ ...f, base_url: e.target.value })} /></Field>
      <Field label="API key" hint={provider?.has_key ? `set (${provider.api_key ?? 'hidden'}); type to replace` : 'write-only: never shown again'}>
        <input name="api_key" type="password" autoComplete="off" className={inputCls} value={f.api_key} onChange={(e) => setF({ ...f, api_key: e.target.value })} />
      </Field>
      {provider?.has_key ? <label className="flex items-end gap-1 text-sm"><input type="checkbox" checked={f.remove_key} onChange={(e) => setF({ ...f, remove_key: e.target.checked })} /> remove the key</label> : <div />}
      <Field label="Price per 1K input tokens ($)"><input name="price_in" type="number" step="any" min="0" className={inputCls} value={f.price_in} onChange={(e) => setF({ ...f, price_in: e.target.value })} /></Field>
      <Field label="Price per 1K output tokens ($)"><input name="price_out" type="number" step="any" min="0" className={inputCls} value={f.price_out} onChange={(e) => setF({ ...f, price_out: e.target.value })} /></Field>
      <Field label="Budget ($, optional)"><input name="budget" type="number" step="any" min="0" className={inputCls} value={f.budget} onChange={(e) => setF({ ...f, budget: e.target.value })} /></Field>
      <label className="text-sm"><input type="checkbox" checked={f.is_active} onChange={(e) => setF({ ...f, is_active: e.target.checked })} /> active</label>
      <div className="col-span-3"><ErrorBox error={save.error} /></div>
      <div className="col-span-3 flex gap-2"><button className={btnPrimary} disabled={save.isPending}>{provider ? 'Save' : 'Create provider'}</button><button type="button" className={btnSecondary} onClick={onDone}>Cancel</button></div>
    </form>
  );
}
