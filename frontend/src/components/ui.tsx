import type { ReactNode } from 'react';
import { errorLines } from '../api/errors';

export function ErrorBox({ error }: { error: unknown }) {
  if (!error) return null;
  const lines = errorLines(error);
  return (
    <div role="alert" className="rounded border border-red-300 bg-red-50 p-2 text-sm text-red-800">
      <div className="font-medium">{lines[0]}</div>
      {lines.length > 1 && (
        <ul className="mt-1 list-disc pl-5">
          {lines.slice(1).map((l, i) => <li key={i}>{l}</li>)}
        </ul>
      )}
    </div>
  );
}

export function Field({ label, children, hint }: { label: string; children: ReactNode; hint?: string }) {
  return (
    <label className="block text-sm">
      <span className="mb-1 block font-medium text-slate-700">{label}</span>
      {children}
      {hint && <span className="mt-0.5 block text-xs text-slate-500">{hint}</span>}
    </label>
  );
}

export const inputCls = 'w-full rounded border border-slate-300 bg-white px-2 py-1 text-sm focus:border-blue-500 focus:outline-none disabled:bg-slate-100';
export const btn = 'rounded px-3 py-1.5 text-sm font-medium disabled:opacity-50';
export const btnPrimary = `${btn} bg-blue-600 text-white hover:bg-blue-700`;
export const btnSecondary = `${btn} border border-slate-300 bg-white text-slate-800 hover:bg-slate-100`;
export const btnDanger = `${btn} border border-red-300 bg-white text-red-700 hover:bg-red-50`;

export function Page({ title, actions, children }: { title: string; actions?: ReactNode; children: ReactNode }) {
  return (
    <div className="mx-auto max-w-6xl p-6">
      <div className="mb-4 flex items-center justify-between">
        <h1 className="text-xl font-semibold">{title}</h1>
        <div className="flex gap-2">{actions}</div>
      </div>
      {children}
    </div>
  );
}

export function when(ts: number | null | undefined): string {
  if (!ts) return '—';
  return new Date(ts * 1000).toLocaleString();
}

export function StatusBadge({ status }: { status: string }) {
  const cls: Record<string, string> = {
    pending: 'bg-slate-200 text-slate-700', queued: 'bg-slate-200 text-slate-700',
    running: 'bg-blue-100 text-blue-800', retrying: 'bg-amber-100 text-amber-800',
    completed: 'bg-green-100 text-green-800', failed: 'bg-red-100 text-red-800',
    skipped: 'bg-slate-100 text-slate-500', cancelled: 'bg-orange-100 text-orange-800',
    registered: 'bg-slate-200 text-slate-700', building: 'bg-blue-100 text-blue-800', ready: 'bg-green-100 text-green-800',
  };
  return <span data-status={status} className={`rounded px-1.5 py-0.5 text-xs font-medium ${cls[status] ?? 'bg-slate-100'}`}>{status}</span>;
}
