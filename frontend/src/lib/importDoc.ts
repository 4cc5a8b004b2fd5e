// Reading a flow document pasted or loaded from a file (YAML or JSON, docs/flow-format.md).

import { parse } from 'yaml';
import type { FlowDocument } from './flowDoc';

export function parseFlowText(text: string): FlowDocument {
  let data: unknown;
  try {
    data = parse(text, { maxAliasCount: 100 });
  } catch (e) {
    throw new Error(`not valid YAML or JSON: ${(e as Error).message.split('\n')[0]}`);
  }
  if (!data || typeof data !== 'object' || Array.isArray(data)) throw new Error('a flow document is a mapping with nodes and edges');
  const doc = data as FlowDocument;
  if (!Array.isArray(doc.nodes)) throw new Error("the document has no 'nodes' list");
  if (doc.edges !== undefined && !Array.isArray(doc.edges)) throw new Error("'edges' must be a list");
  return { ...doc, edges: doc.edges ?? [] };
}

/** docs/flow-format.md's example, runnable offline (the 'scripted' provider). */
export const EXAMPLE_FLOW = `# One agent researches a topic, a second turns the notes into a short article. Runs offline.
name: Research and write
description: Research a topic, then write it up.
inputs:
  topic: {description: What to write about, default: the history of tide mills}
agents:
  researcher: {role: Senior researcher, goal: Find the key facts about a topic, provider: scripted}
  writer: {role: Technical writer, goal: Explain research clearly, provider: scripted}
nodes:
  - {id: start, kind: input}
  - id: research
    kind: agent
    agent: researcher
    task: "Research {{ inputs.topic }} and list the five most important facts."
    retry: {max_attempts: 3, initial_delay: 0.5}
  - id: write
    kind: agent
    agent: writer
    task: "Write a 200-word article from these notes: {{ nodes.research.output }}"
  - {id: article, kind: output, value: "{{ nodes.write.output }}"}
edges: [start -> research, research -> write, write -> article]
`;
