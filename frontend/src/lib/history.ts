// Undo/redo over immutable snapshots. `push` records a new present; a burst of pushes with the same
// `mergeKey` (typing in one field, dragging one node) becomes one step.

export interface History<T> {
  past: T[];
  present: T;
  future: T[];
  lastKey: string | null;
}

export const LIMIT = 100;

export function createHistory<T>(present: T): History<T> {
  return { past: [], present, future: [], lastKey: null };
}

export function push<T>(h: History<T>, next: T, mergeKey: string | null = null): History<T> {
  if (next === h.present) return h;
  if (mergeKey !== null && mergeKey === h.lastKey) return { ...h, present: next, future: [] };
  const past = [...h.past, h.present].slice(-LIMIT);
  return { past, present: next, future: [], lastKey: mergeKey };
}

/** Replaces the present without recording a step (selection changes, server-assigned fields). */
export function replace<T>(h: History<T>, next: T): History<T> {
  return { ...h, present: next };
}

export function undo<T>(h: History<T>): History<T> {
  if (!h.past.length) return h;
  const prev = h.past[h.past.length - 1];
  return { past: h.past.slice(0, -1), present: prev, future: [h.present, ...h.future], lastKey: null };
}

export function redo<T>(h: History<T>): History<T> {
  if (!h.future.length) return h;
  const [next, ...rest] = h.future;
  return { past: [...h.past, h.present], present: next, future: rest, lastKey: null };
}

export const canUndo = <T,>(h: History<T>) => h.past.length > 0;
export const canRedo = <T,>(h: History<T>) => h.future.length > 0;
