import { describe, expect, it } from 'vitest';
import { permissions } from './resources';

describe('permissions', () => {
  it('follows the seed matrix: viewers only read, members edit and run, admins also manage', () => {
    expect(permissions('viewer')).toEqual({ editAgents: false, editFlows: false, execute: false, admin: false });
    expect(permissions('member')).toEqual({ editAgents: true, editFlows: true, execute: true, admin: false });
    expect(permissions('admin')).toEqual({ editAgents: true, editFlows: true, execute: true, admin: true });
    expect(permissions(undefined).execute).toBe(false);
  });
});
