import { describe, expect, it } from 'vitest';
import { EXAMPLE_FLOW, parseFlowText } from './importDoc';
import { docToCanvas } from './flowDoc';
import { validateCanvas } from './validate';

describe('parseFlowText', () => {
  it('reads the YAML example into a valid canvas', () => {
    const doc = parseFlowText(EXAMPLE_FLOW);
    expect(doc.nodes.map((n) => n.id)).toEqual(['start', 'research', 'write', 'article']);
    const canvas = docToCanvas(doc);
    expect(canvas.edges.map((e) => e.id)).toEqual(['start->research', 'research->write', 'write->article']);
    expect(validateCanvas(canvas)).toEqual([]);
  });

  it('reads JSON and refuses what is not a flow', () => {
    expect(parseFlowText('{"nodes": [{"id": "a", "kind": "input"}]}').edges).toEqual([]);
    expect(() => parseFlowText('[1, 2]')).toThrow(/mapping/);
    expect(() => parseFlowText('name: x')).toThrow(/nodes/);
    expect(() => parseFlowText('a: [')).toThrow(/YAML/);
  });
});
