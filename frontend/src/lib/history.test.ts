import { describe, expect, it } from 'vitest';
import { createHistory, push, redo, undo, canUndo, canRedo } from './history';

describe('history', () => {
  it('undoes and redoes, and a new edit drops the redo branch', () => {
    let h = createHistory(1);
    h = push(h, 2);
    h = push(h, 3);
    h = undo(h);
    expect(h.present).toBe(2);
    h = redo(h);
    expect(h.present).toBe(3);
    h = undo(undo(h));
    expect(h.present).toBe(1);
    expect(canUndo(h)).toBe(false);
    h = push(h, 9);
    expect(canRedo(h)).toBe(false);
    expect(undo(h).present).toBe(1);
  });

  it('merges a burst of edits with the same key into one step', () => {
    let h = createHistory('');
    h = push(h, 'a', 'task');
    h = push(h, 'ab', 'task');
    h = push(h, 'abc', 'task');
    expect(undo(h).present).toBe('');
    h = push(h, 'x', 'other');
    expect(undo(h).present).toBe('abc');
  });
});
