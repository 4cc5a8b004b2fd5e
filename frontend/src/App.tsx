import { Link, Navigate, NavLink, Route, Routes, useLocation, useNavigate } from 'react-router-dom';
import { useQueryClient } from '@tanstack/react-query';
import { SessionProvider, useSession } from './auth';
import { auth } from './api/resources';
import { LoginPage, RegisterPage } from './pages/AuthPages';
import { AgentsPage } from './pages/AgentsPage';
import { ExecutionsPage } from './pages/ExecutionsPage';
import { lazy, Suspense } from 'react';

// The canvas screens (React Flow) and the flow import (YAML parser) load on first use.
const FlowsPage = lazy(() => import('./pages/FlowsPage').then((m) => ({ default: m.FlowsPage })));
const FlowEditorPage = lazy(() => import('./pages/FlowEditorPage').then((m) => ({ default: m.FlowEditorPage })));
const ExecutionPage = lazy(() => import('./pages/ExecutionPage').then((m) => ({ default: m.ExecutionPage })));
import { CrewsPage } from './pages/CrewsPage';
import { ProvidersPage } from './pages/ProvidersPage';
import { ToolsPage } from './pages/ToolsPage';
import { UsersPage } from './pages/UsersPage';

export function App() {
  return (
    <SessionProvider>
      <Shell />
    </SessionProvider>
  );
}

function Shell() {
  const { me, loading } = useSession();
  const location = useLocation();
  if (loading) return <div className="p-6 text-slate-500">Loading…</div>;
  if (!me) {
    return (
      <Routes>
        <Route path="/register" element={<RegisterPage />} />
        <Route path="/login" element={<LoginPage />} />
        <Route path="*" element={<Navigate to="/login" replace state={{ from: location.pathname }} />} />
      </Routes>
    );
  }
  return (
    <div className="flex h-full flex-col">
      <TopBar />
      <main className="min-h-0 flex-1 overflow-auto">
        <Suspense fallback={<div className="p-6 text-slate-500">Loading…</div>}>
        <Routes>
          <Route path="/" element={<Navigate to="/flows" replace />} />
          <Route path="/login" element={<Navigate to="/flows" replace />} />
          <Route path="/register" element={<Navigate to="/flows" replace />} />
          <Route path="/agents" element={<AgentsPage />} />
          <Route path="/crews" element={<CrewsPage />} />
          <Route path="/providers" element={<ProvidersPage />} />
          <Route path="/tools" element={<ToolsPage />} />
          <Route path="/users" element={<UsersPage />} />
          <Route path="/flows" element={<FlowsPage />} />
          <Route path="/flows/new" element={<FlowEditorPage />} />
          <Route path="/flows/:flowId" element={<FlowEditorPage />} />
          <Route path="/flows/:flowId/executions" element={<ExecutionsPage />} />
          <Route path="/executions/:executionId" element={<ExecutionPage />} />
          <Route path="*" element={<div className="p-6">Not found. <Link className="text-blue-700 underline" to="/flows">Flows</Link></div>} />
        </Routes>
        </Suspense>
      </main>
    </div>
  );
}

function TopBar() {
  const { me, can } = useSession();
  const qc = useQueryClient();
  const navigate = useNavigate();
  const logout = async () => {
    try {
      await auth.logout();
    } catch {
      /* the session may already be gone */
    }
    qc.setQueryData(['me'], null);
    qc.removeQueries({ predicate: (q) => q.queryKey[0] !== 'me' });
    navigate('/login');
  };
  const link = ({ isActive }: { isActive: boolean }) => `px-2 py-1 rounded ${isActive ? 'bg-slate-700 text-white' : 'text-slate-200 hover:text-white'}`;
  return (
    <header className="flex items-center gap-4 bg-slate-900 px-4 py-2 text-sm text-white">
      <span className="font-semibold">crewflow</span>
      <nav className="flex gap-1">
        <NavLink to="/flows" className={link}>Flows</NavLink>
        <NavLink to="/agents" className={link}>Agents</NavLink>
        <NavLink to="/crews" className={link}>Crews</NavLink>
        {can.admin && <NavLink to="/providers" className={link}>Providers</NavLink>}
        {can.execute && <NavLink to="/tools" className={link}>Tools</NavLink>}
        {can.admin && <NavLink to="/users" className={link}>Users</NavLink>}
      </nav>
      <div className="ml-auto flex items-center gap-3">
        <span data-testid="whoami">{me?.user.email} · {me?.tenant.name} · <b data-testid="role">{me?.user.role}</b></span>
        <button onClick={logout} className="rounded border border-slate-500 px-2 py-0.5 hover:bg-slate-700">Log out</button>
      </div>
    </header>
  );
}
