import { describe, expect, it } from 'vitest';
import { docToCanvas, type FlowDocument } from './flowDoc';
import { findCycles, problemsByTarget, validateCanvas } from './validate';

const canvas = (doc: Partial<FlowDocument>) => docToCanvas({ nodes: [], edges: [], ...doc } as FlowDocument);
const codes = (doc: Partial<FlowDocument>, cat = {}) => validateCanvas(canvas(doc), cat).map((p) => p.code).sort();

describe('validateCanvas', () => {
  it('accepts a valid three-node flow', () => {
    expect(codes({
      nodes: [{ id: 'in', kind: 'input' }, { id: 'a', kind: 'agent', agent: 'w', task: 'Write {{ inputs.topic }}' }, { id: 'out', kind: 'output', value: '{{ nodes.a.output }}' }],
      edges: ['in -> a', 'a -> out'],
    }, { agents: ['w'] })).toEqual([]);
  });

  it('flags an empty flow', () => {
    expect(codes({})).toEqual(['empty']);
  });

  it('names the nodes of a cycle', () => {
    const problems = validateCanvas(canvas({
      nodes: [{ id: 'a', kind: 'output' }, { id: 'b', kind: 'output' }, { id: 'c', kind: 'output' }],
      edges: ['a -> b', 'b -> c', 'c -> a'],
    }));
    const cycle = problems.find((p) => p.code === 'cycle')!;
    expect(cycle.nodes.sort()).toEqual(['a', 'b', 'c']);
  });

  it('flags dangling and duplicate edges on the edge', () => {
    const c = canvas({ nodes: [{ id: 'a', kind: 'input' }], edges: [] });
    c.edges.push({ id: 'a->ghost', source: 'a', target: 'ghost' }, { id: 'a->ghost', source: 'a', target: 'ghost' });
    const p = validateCanvas(c);
    expect(p.map((x) => x.code)).toEqual(['dangling_edge', 'duplicate_edge']);
    expect(p[0].edge).toEqual(['a', 'ghost']);
  });

  it('flags a router without default and branches that do not match edges', () => {
    const p = validateCanvas(canvas({
      nodes: [{ id: 'in', kind: 'input' }, { id: 'r', kind: 'router', routes: [{ when: 'true', to: 'x' }] }, { id: 'x', kind: 'output' }, { id: 'y', kind: 'output' }],
      edges: ['in -> r', 'r -> y'],
    }));
    const c = p.map((x) => x.code).sort();
    expect(c).toEqual(['branch_without_edge', 'edge_not_a_branch', 'router_without_default', 'unreachable']);
    expect(p.find((x) => x.code === 'edge_not_a_branch')!.edge).toEqual(['r', 'y']);
    expect(p.find((x) => x.code === 'unreachable')!.nodes).toEqual(['x']);
  });

  it('flags agent nodes without agent or task, and unknown agents', () => {
    expect(codes({ nodes: [{ id: 'a', kind: 'agent' }], edges: [] })).toEqual(['missing_agent', 'missing_task']);
    expect(codes({ nodes: [{ id: 'a', kind: 'agent', agent: 'nobody', task: 't' }], edges: [] }, { agents: ['w'] })).toEqual(['unknown_agent']);
    // an agent embedded in the document counts as known
    expect(codes({ agents: { nobody: {} }, nodes: [{ id: 'a', kind: 'agent', agent: 'nobody', task: 't' }], edges: [] }, { agents: ['w'] })).toEqual([]);
  });

  it('flags input nodes with parents, output nodes with children and bad ids', () => {
    expect(codes({ nodes: [{ id: 'o', kind: 'output' }, { id: 'i', kind: 'input' }], edges: ['o -> i'] })).toEqual(['input_has_parents', 'output_has_children', 'unreachable']);
    expect(codes({ nodes: [{ id: '9 lives', kind: 'output' }], edges: [] })).toEqual(['bad_id']);
  });

  it('flags templates reading nodes that are not ancestors', () => {
    const p = validateCanvas(canvas({
      nodes: [{ id: 'in', kind: 'input' }, { id: 'a', kind: 'output', value: '{{ nodes.b.output }}' }, { id: 'b', kind: 'output', value: '{{ nodes.zzz.output }}' }],
      edges: ['in -> a', 'in -> b'],
    }));
    expect(p.map((x) => [x.code, x.nodes[0]])).toEqual([['not_an_ancestor', 'a'], ['not_an_ancestor', 'b']]);
    expect(p[1].message).toContain("unknown node 'zzz'");
  });
});

describe('findCycles', () => {
  it('reports each cycle once', () => {
    const kids = new Map([['a', ['b']], ['b', ['a', 'c']], ['c', ['c']]]);
    expect(findCycles(['a', 'b', 'c'], kids).map((c) => c.sort().join())).toEqual(['a,b', 'c']);
  });
});

describe('problemsByTarget', () => {
  it('files server problems under the nodes and edges they name', () => {
    const server = [
      { code: 'cycle', where: 'flow', message: 'cycle', nodes: ['a', 'b'], edge: null },
      { code: 'edge_not_a_branch', where: "edge 'r' -> 'y'", message: 'x', nodes: [], edge: ['r', 'y'] as [string, string] },
      { code: 'shape', where: "nodes[2] 'write'.retry.max_attempts", message: 'must be an integer', nodes: [], edge: null },
      { code: 'max_parallel', where: 'flow', message: 'too many', nodes: [], edge: null },
      { code: 'unknown_agent', where: "node 'gone'", message: 'x', nodes: ['gone'], edge: null },
    ];
    const idx = problemsByTarget(server, ['a', 'b', 'write', 'r', 'y']);
    expect(idx.byNode.get('a')!.map((p) => p.code)).toEqual(['cycle']);
    expect(idx.byNode.get('b')!.map((p) => p.code)).toEqual(['cycle']);
    expect(idx.byEdge.get('r->y')!.map((p) => p.code)).toEqual(['edge_not_a_branch']);
    expect(idx.byNode.get('write')!.map((p) => p.code)).toEqual(['shape']);
    expect(idx.general.map((p) => p.code)).toEqual(['max_parallel', 'unknown_agent']);
  });
});
