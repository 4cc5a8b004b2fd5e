import { useState, type FormEvent } from 'react';
import { Link, useNavigate } from 'react-router-dom';
import { useQueryClient } from '@tanstack/react-query';
import { auth } from '../api/resources';
import { ErrorBox, Field, btnPrimary, inputCls } from '../components/ui';

function Card({ title, children }: { title: string; children: React.ReactNode }) {
  return (
    <div className="flex min-h-full items-center justify-center p-6">
      <div className="w-full max-w-sm rounded-lg border border-slate-200 bg-white p-6 shadow-sm">
        <h1 className="mb-4 text-lg font-semibold">{title}</h1>
        {children}
      </div>
    </div>
  );
}

export function LoginPage() {
  const [email, setEmail] = useState('');
  const [password, setPassword] = useState('');
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const qc = useQueryClient();
  const navigate = useNavigate();
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await auth.login(email, password);
      const me = await auth.me();
      qc.removeQueries({ predicate: (q) => q.queryKey[0] !== 'me' });
      qc.setQueryData(['me'], me);
      navigate('/flows');
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <Card title="Log in to crewflow">
      <form onSubmit={submit} className="space-y-3">
        <Field label="E-mail"><input name="email" type="email" autoComplete="username" className={inputCls} value={email} onChange={(e) => setEmail(e.target.value)} required /></Field>
        <Field label="Password"><input name="password" type="password" autoComplete="current-password" className={inputCls} value={password} onChange={(e) => setPassword(e.target.value)} required /></Field>
        <ErrorBox error={error} />
        <button className={`${btnPrimary} w-full`} disabled={busy}>Log in</button>
      </form>
      <p className="mt-4 text-sm text-slate-600">New team? <Link className="text-blue-700 underline" to="/register">Register a tenant</Link></p>
    </Card>
  );
}

const slugOf = (s: string) => s.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 48);

export function RegisterPage() {
  const [tenantName, setTenantName] = useState('');
  const [slug, setSlug] = useState('');
  const [slugTouched, setSlugTouched] = useState(false);
  const [email, setEmail] = useState('');
  const [password, setPassword] = useState('');
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const qc = useQueryClient();
  const navigate = useNavigate();
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await auth.register({ tenant_name: tenantName, slug: slug || slugOf(tenantName), email, password });
      await auth.login(email, password);
      qc.setQueryData(['me'], await auth.me());
      navigate('/flows');
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <Card title="Register your team">
      <form onSubmit={submit} className="space-y-3">
        <Field label="Team name"><input name="tenant_name" className={inputCls} value={tenantName} onChange={(e) => { setTenantName(e.target.value); if (!slugTouched) setSlug(slugOf(e.target.value)); }} required /></Field>
        <Field label="Slug" hint="lower-case letters, digits and dashes"><input name="slug" className={inputCls} value={slug} onChange={(e) => { setSlug(e.target.value); setSlugTouched(true); }} required pattern="[a-z0-9](?:[a-z0-9\-]{0,46}[a-z0-9])?" /></Field>
        <Field label="Admin e-mail"><input name="email" type="email" autoComplete="username" className={inputCls} value={email} onChange={(e) => setEmail(e.target.value)} required /></Field>
        <Field label="Password" hint="at least 12 characters"><input name="password" type="password" autoComplete="new-password" minLength={12} className={inputCls} value={password} onChange={(e) => setPassword(e.target.value)} required /></Field>
        <ErrorBox error={error} />
        <button className={`${btnPrimary} w-full`} disabled={busy}>Register and log in</button>
      </form>
      <p className="mt-4 text-sm text-slate-600">Already registered? <Link className="text-blue-700 underline" to="/login">Log in</Link></p>
    </Card>
  );
}
