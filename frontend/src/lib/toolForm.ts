// Pure helpers of the Tools page: the registration body for each kind of tool, a sample input built from a
// tool's input JSON Schema (to prefill the test form), and which build states are still moving.

import type { Tool, ToolIn } from '../api/resources';

export type ToolKind = 'script' | 'dockerfile' | 'image';

export const WORDCOUNT_SCRIPT = [
  'import json, sys',
  '',
  '# Reads one JSON document on stdin, prints one on stdout.',
  'data = json.load(sys.stdin)',
  'print(json.dumps({"words": len(str(data.get("text", "")).split())}))',
  '',
].join('\n');

export const DEFAULT_DOCKERFILE = [
  'FROM crewflow/tool-base:bookworm',
  'COPY tool.py /opt/tool/tool.py',
  'ENTRYPOINT ["/usr/bin/python3", "/opt/tool/tool.py"]',
  '',
].join('\n');

/** The context file the default Dockerfile copies. */
export const CONTEXT_FILE = 'tool.py';

export const INPUT_SCHEMA_EXAMPLE = '{\n  "type": "object",\n  "properties": {"text": {"type": "string"}},\n  "required": ["text"]\n}';
export const OUTPUT_SCHEMA_EXAMPLE = '{\n  "type": "object",\n  "properties": {"words": {"type": "integer", "minimum": 0}},\n  "required": ["words"]\n}';

export interface ToolFormState {
  kind: ToolKind;
  name: string;
  description: string;
  script: string;
  dockerfile: string;
  contextFile: string;
  image: string;
  input: string;
  output: string;
}

/** A JSON object typed in a textarea, or an Error naming the field ("input schema: Unexpected token …"). */
export function parseJsonObject(label: string, text: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new Error(`${label}: ${(e as Error).message}`);
  }
  if (!v || typeof v !== 'object' || Array.isArray(v)) throw new Error(`${label}: must be a JSON object`);
  return v as Record<string, unknown>;
}

/** The POST /tools body: exactly one source (script, Dockerfile with its context file, or image). */
export function toolBody(f: ToolFormState): ToolIn {
  const body: ToolIn = {
    name: f.name.trim(),
    description: f.description,
    input_schema: parseJsonObject('input schema', f.input),
    output_schema: parseJsonObject('output schema', f.output),
  };
  if (f.kind === 'script') body.script = f.script;
  else if (f.kind === 'image') body.docker_image = f.image.trim();
  else {
    body.dockerfile = f.dockerfile;
    if (f.contextFile.trim()) body.context = { [CONTEXT_FILE]: f.contextFile };
  }
  return body;
}

/** Where a tool's runnable comes from, for the table. */
export function toolSource(t: Pick<Tool, 'dockerfile' | 'docker_image' | 'script'>): string {
  if (t.dockerfile) return `Dockerfile (${t.dockerfile.split('\n').filter((l) => l.trim()).length} lines)`;
  if (t.docker_image) return t.docker_image;
  if (t.script) return `Python script (${t.script.split('\n').filter((l) => l.trim()).length} lines)`;
  return '—';
}

const MOVING = new Set(['queued', 'building']);
/** Whether a build status will change by itself (poll while it is). */
export function isBuildInProgress(status: string | undefined | null): boolean {
  return !!status && MOVING.has(status);
}

type Schema = Record<string, unknown>;

function isSchema(v: unknown): v is Schema {
  return !!v && typeof v === 'object' && !Array.isArray(v);
}

/** A document shaped like `schema` to start the test form from: `default`, `const`, the first of `examples`
 * or `enum`, else an empty value of the type; objects get every property (recursively), arrays start empty. */
export function sampleFromSchema(schema: unknown, depth = 0): unknown {
  if (!isSchema(schema) || depth > 8) return null;
  if ('default' in schema) return schema.default;
  if ('const' in schema) return schema.const;
  if (Array.isArray(schema.examples) && schema.examples.length) return schema.examples[0];
  if (Array.isArray(schema.enum) && schema.enum.length) return schema.enum[0];
  for (const key of ['oneOf', 'anyOf', 'allOf']) {
    const alts = schema[key];
    if (Array.isArray(alts) && alts.length && !schema.type && !schema.properties) return sampleFromSchema(alts[0], depth + 1);
  }
  let type = schema.type;
  if (Array.isArray(type)) type = type.find((t) => t !== 'null') ?? type[0];
  if (type === undefined && isSchema(schema.properties)) type = 'object';
  switch (type) {
    case 'object': {
      const out: Record<string, unknown> = {};
      const props = isSchema(schema.properties) ? schema.properties : {};
      for (const [k, sub] of Object.entries(props)) out[k] = sampleFromSchema(sub, depth + 1);
      return out;
    }
    case 'array': return [];
    case 'string': return '';
    case 'integer':
    case 'number': return typeof schema.minimum === 'number' ? schema.minimum : 0;
    case 'boolean': return false;
    case 'null': return null;
    default: return null;
  }
}

/** The test form's starting text: the sample of the input schema, pretty-printed. */
export function sampleInputText(schema: unknown): string {
  const v = sampleFromSchema(schema);
  return JSON.stringify(v === null || v === undefined ? {} : v, null, 2);
}
