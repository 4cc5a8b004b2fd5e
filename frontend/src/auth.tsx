import { createContext, useContext, useEffect, type ReactNode } from 'react';
import { useQuery, useQueryClient } from '@tanstack/react-query';
import { auth, permissions, type Me } from './api/resources';
import { ApiError } from './api/errors';
import { setUnauthorizedHandler } from './api/client';

interface Session {
  me: Me | null;
  loading: boolean;
  can: ReturnType<typeof permissions>;
  refresh: () => Promise<unknown>;
}

const Ctx = createContext<Session>({ me: null, loading: true, can: permissions(undefined), refresh: async () => null });

export function SessionProvider({ children }: { children: ReactNode }) {
  const qc = useQueryClient();
  const q = useQuery({
    queryKey: ['me'],
    queryFn: async () => {
      try {
        return await auth.me();
      } catch (e) {
        if (e instanceof ApiError && e.status === 401) return null;
        throw e;
      }
    },
    staleTime: 60_000,
  });
  useEffect(() => {
    setUnauthorizedHandler(() => {
      if (qc.getQueryData(['me'])) qc.setQueryData(['me'], null);
    });
    return () => setUnauthorizedHandler(null);
  }, [qc]);
  const me = q.data ?? null;
  return (
    <Ctx.Provider value={{ me, loading: q.isLoading, can: permissions(me?.user.role), refresh: () => q.refetch() }}>
      {children}
    </Ctx.Provider>
  );
}

export const useSession = () => useContext(Ctx);
