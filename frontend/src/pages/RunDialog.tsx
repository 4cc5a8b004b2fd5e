import { useState, type FormEvent } from 'react';
import { useNavigate } from 'react-router-dom';
import { flows } from '../api/resources';
import { ErrorBox, Field, btnPrimary, btnSecondary, inputCls } from '../components/ui';
import { inputSpecs, runInputs, type Canvas } from '../lib/flowDoc';

export function RunDialog({ flowId, meta, onClose }: { flowId: string; meta: Canvas['meta']; onClose: () => void }) {
  const specs = inputSpecs(meta.inputs);
  const [values, setValues] = useState<Record<string, string>>(() =>
    Object.fromEntries(specs.map((s) => [s.name, s.default == null ? '' : typeof s.default === 'string' ? s.default : JSON.stringify(s.default)])));
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const [key] = useState(() => (globalThis.crypto?.randomUUID?.() ?? `${Date.now()}-${Math.random()}`));
  const navigate = useNavigate();
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const res = await flows.execute(flowId, runInputs(specs, values), key);
      navigate(`/executions/${encodeURIComponent(res.execution_id)}`);
    } catch (err) {
      setError(err);
      setBusy(false);
    }
  };
  return (
    <div className="fixed inset-0 z-50 flex items-center justify-center bg-black/30">
      <form onSubmit={submit} className="w-96 space-y-3 rounded-lg bg-white p-4 shadow-lg" data-testid="run-dialog">
        <h2 className="font-semibold">Run {flowId}</h2>
        {specs.length === 0 && <p className="text-sm text-slate-500">This flow declares no inputs.</p>}
        {specs.map((s) => (
          <Field key={s.name} label={s.name} hint={s.description}>
            <input name={`input-${s.name}`} className={inputCls} value={values[s.name] ?? ''} onChange={(e) => setValues({ ...values, [s.name]: e.target.value })} required={!!s.required} />
          </Field>
        ))}
        <ErrorBox error={error} />
        <div className="flex gap-2">
          <button className={btnPrimary} disabled={busy} data-testid="start-run">Start run</button>
          <button type="button" className={btnSecondary} onClick={onClose}>Cancel</button>
        </div>
      </form>
    </div>
  );
}
