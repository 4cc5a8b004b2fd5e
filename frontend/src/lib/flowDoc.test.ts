import { describe, expect, it } from 'vitest';
import { canvasToDoc, docToCanvas, freshId, layeredLayout, normalizeEdge, renameNode, type FlowDocument } from './flowDoc';

const doc: FlowDocument = {
  id: 'research-write',
  name: 'Research and write',
  inputs: { topic: { default: 'tide mills' } },
  agents: { researcher: { role: 'R', goal: 'G', provider: 'scripted' } },
  max_parallel: 4,
  nodes: [
    { id: 'start', kind: 'input', position: [0, 0] },
    { id: 'research', kind: 'agent', agent: 'researcher', task: 'Research {{ inputs.topic }}', retry: { max_attempts: 3 }, position: { x: 250, y: 10 } },
    { id: 'done', kind: 'output', value: '{{ nodes.research.output }}' },
  ],
  edges: ['start -> research', ['research', 'done']],
};

describe('docToCanvas / canvasToDoc', () => {
  it('keeps positions, fields and the rest of the document through a round trip', () => {
    const canvas = docToCanvas(doc);
    expect(canvas.nodes.map((n) => n.id)).toEqual(['start', 'research', 'done']);
    expect(canvas.nodes[0].position).toEqual({ x: 0, y: 0 });
    expect(canvas.nodes[1].position).toEqual({ x: 250, y: 10 });
    expect(canvas.nodes[1].data.body).toEqual({ kind: 'agent', agent: 'researcher', task: 'Research {{ inputs.topic }}', retry: { max_attempts: 3 } });
    expect(canvas.edges).toEqual([
      { id: 'start->research', source: 'start', target: 'research' },
      { id: 'research->done', source: 'research', target: 'done' },
    ]);
    expect(canvas.meta).toMatchObject({ id: 'research-write', max_parallel: 4, agents: doc.agents, inputs: doc.inputs });

    const back = canvasToDoc(canvas);
    expect(back.edges).toEqual([{ from: 'start', to: 'research' }, { from: 'research', to: 'done' }]);
    expect(back.nodes[1]).toEqual({ id: 'research', kind: 'agent', agent: 'researcher', task: 'Research {{ inputs.topic }}', retry: { max_attempts: 3 }, position: [250, 10] });
    expect(back.nodes[2].value).toBe('{{ nodes.research.output }}');
    expect(back.name).toBe('Research and write');
    // and a second trip changes nothing
    expect(canvasToDoc(docToCanvas(back))).toEqual(back);
  });

  it('lays out nodes that have no position, right of their parents', () => {
    const canvas = docToCanvas(doc);
    const done = canvas.nodes.find((n) => n.id === 'done')!;
    expect(done.position.x).toBeGreaterThan(0);
  });

  it('drops duplicate and malformed edges', () => {
    const c = docToCanvas({ nodes: [{ id: 'a', kind: 'input' }, { id: 'b', kind: 'output' }], edges: ['a -> b', { from: 'a', to: 'b' }, 'nonsense', 42 as unknown as string] });
    expect(c.edges).toHaveLength(1);
  });

  it('rounds positions when saving', () => {
    const c = docToCanvas({ nodes: [{ id: 'a', kind: 'input', position: [1.4, 2.6] }], edges: [] });
    expect(canvasToDoc(c).nodes[0].position).toEqual([1, 3]);
  });
});

describe('helpers', () => {
  it('normalizes every edge spelling', () => {
    expect(normalizeEdge('a -> b')).toEqual({ from: 'a', to: 'b' });
    expect(normalizeEdge(['a', 'b'])).toEqual({ from: 'a', to: 'b' });
    expect(normalizeEdge({ source: 'a', target: 'b' })).toEqual({ from: 'a', to: 'b' });
    expect(normalizeEdge('a ->')).toBeNull();
  });

  it('finds a fresh id', () => {
    expect(freshId('agent', [])).toBe('agent');
    expect(freshId('agent', ['agent', 'agent_2'])).toBe('agent_3');
    expect(freshId('1x', [])).toBe('_1x');
  });

  it('renames a node in edges, router branches and templates', () => {
    const c = docToCanvas({
      nodes: [
        { id: 'r', kind: 'router', routes: [{ when: "len(nodes.a.output) > 3", to: 'a' }], default: 'a' },
        { id: 'a', kind: 'agent', agent: 'x', task: 't' },
        { id: 'o', kind: 'output', value: '{{ nodes.a.output }} and {{ nodes.ab.output }}' },
      ],
      edges: ['r -> a', 'a -> o'],
    });
    const r = renameNode(c, 'a', 'b');
    expect(r.nodes.map((n) => n.id)).toEqual(['r', 'b', 'o']);
    expect(r.nodes[0].data.body.routes).toEqual([{ when: 'len(nodes.b.output) > 3', to: 'b' }]);
    expect(r.nodes[0].data.body.default).toBe('b');
    expect(r.nodes[2].data.body.value).toBe('{{ nodes.b.output }} and {{ nodes.ab.output }}');
    expect(r.edges.map((e) => e.id)).toEqual(['r->b', 'b->o']);
  });

  it('lays out layers left to right and tolerates cycles', () => {
    const pos = layeredLayout(['a', 'b', 'c', 'd'], [
      { source: 'a', target: 'b' }, { source: 'a', target: 'c' }, { source: 'b', target: 'd' }, { source: 'c', target: 'd' }, { source: 'd', target: 'a' },
    ]);
    expect(pos.a.x).toBeLessThan(pos.b.x);
    expect(pos.b.x).toBe(pos.c.x);
    expect(pos.b.y).not.toBe(pos.c.y);
    expect(pos.d.x).toBeGreaterThan(pos.b.x);
  });
});

import { inputSpecs, runInputs } from './flowDoc';

describe('inputs', () => {
  it('reads inputs declared as a mapping or as a list', () => {
    expect(inputSpecs({ topic: { description: 'd', default: 'x' }, n: 3 })).toEqual([{ name: 'topic', description: 'd', default: 'x' }, { name: 'n', default: 3 }]);
    expect(inputSpecs([{ name: 'topic', default: 'x', required: false }, 'other'])).toEqual([{ name: 'topic', default: 'x', required: false }, { name: 'other' }]);
    expect(inputSpecs(undefined)).toEqual([]);
  });

  it('turns form values into run inputs, keeping text for text inputs', () => {
    const specs = [{ name: 'topic', default: 'x' }, { name: 'count' }, { name: 'empty' }];
    expect(runInputs(specs, { topic: '42', count: '7', empty: '' })).toEqual({ topic: '42', count: 7 });
  });
});
