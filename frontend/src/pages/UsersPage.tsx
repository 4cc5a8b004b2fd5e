import { useState, type FormEvent } from 'react';
import { useMutation, useQuery, useQueryClient } from '@tanstack/react-query';
import { users, type Role } from '../api/resources';
import { useSession } from '../auth';
import { ErrorBox, Field, Page, btnDanger, btnPrimary, btnSecondary, inputCls } from '../components/ui';

const ROLES: Role[] = ['admin', 'member', 'viewer'];

export function UsersPage() {
  const { can, me } = useSession();
  const qc = useQueryClient();
  const list = useQuery({ queryKey: ['users'], queryFn: users.all, enabled: can.admin });
  const [inviting, setInviting] = useState(false);
  const change = useMutation({
    mutationFn: ({ id, ...body }: { id: string; role?: Role; is_active?: boolean }) => users.update(id, body),
    onSuccess: () => qc.invalidateQueries({ queryKey: ['users'] }),
  });
  const remove = useMutation({ mutationFn: (id: string) => users.remove(id), onSuccess: () => qc.invalidateQueries({ queryKey: ['users'] }) });
  if (!can.admin) return <Page title="Users"><p className="text-sm text-slate-600">Only admins manage users.</p></Page>;
  return (
    <Page title="Users" actions={<button className={btnPrimary} onClick={() => setInviting(true)}>Add user</button>}>
      <p className="mb-3 text-sm text-slate-600">Members edit and run flows and agents; viewers only look.</p>
      <ErrorBox error={list.error ?? change.error ?? remove.error} />
      {inviting && <InviteForm onDone={() => setInviting(false)} />}
      <table className="w-full border-collapse bg-white text-sm" data-testid="users-table">
        <thead><tr className="border-b text-left text-slate-600"><th className="p-2">E-mail</th><th className="p-2">Role</th><th className="p-2">Active</th><th className="p-2" /></tr></thead>
        <tbody>
          {(list.data ?? []).map((u) => {
            const self = u.id === me?.user.id;
            return (
              <tr key={u.id} className="border-b">
                <td className="p-2">{u.email}{self ? ' (you)' : ''}</td>
                <td className="p-2">
                  <select className={inputCls} value={u.role} disabled={self || change.isPending} onChange={(e) => change.mutate({ id: u.id, role: e.target.value as Role })}>
                    {ROLES.map((r) => <option key={r}>{r}</option>)}
                  </select>
                </td>
                <td className="p-2"><input type="checkbox" checked={u.is_active} disabled={self || change.isPending} onChange={(e) => change.mutate({ id: u.id, is_active: e.target.checked })} /></td>
                <td className="p-2 text-right">{!self && <button className={btnDanger} onClick={() => { if (confirm(`Delete ${u.email}?`)) remove.mutate(u.id); }}>Delete</button>}</td>
              </tr>
            );
          })}
        </tbody>
      </table>
    </Page>
  );
}

function InviteForm({ onDone }: { onDone: () => void }) {
  const qc = useQueryClient();
  const [email, setEmail] = useState('');
  const [role, setRole] = useState<Role>('member');
  const [password, setPassword] = useState('');
  const save = useMutation({ mutationFn: () => users.invite({ email, role, password }), onSuccess: () => { qc.invalidateQueries({ queryKey: ['users'] }); onDone(); } });
  const submit = (e: FormEvent) => { e.preventDefault(); save.mutate(); };
  return (
    <form onSubmit={submit} className="mb-4 grid grid-cols-3 gap-3 rounded border border-slate-200 bg-white p-4" data-testid="invite-form">
      <Field label="E-mail"><input name="email" type="email" className={inputCls} value={email} onChange={(e) => setEmail(e.target.value)} required /></Field>
      <Field label="Role"><select name="role" className={inputCls} value={role} onChange={(e) => setRole(e.target.value as Role)}>{ROLES.map((r) => <option key={r}>{r}</option>)}</select></Field>
      <Field label="Initial password" hint="at least 12 characters; share it with them"><input name="password" type="password" autoComplete="new-password" minLength={12} className={inputCls} value={password} onChange={(e) => setPassword(e.target.value)} required /></Field>
      <div className="col-span-3"><ErrorBox error={save.error} /></div>
      <div className="col-span-3 flex gap-2"><button className={btnPrimary} disabled={save.isPending}>Add user</button><button type="button" className={btnSecondary} onClick={onDone}>Cancel</button></div>
    </form>
  );
}
