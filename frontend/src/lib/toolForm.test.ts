import { describe, expect, it } from 'vitest';
import { isBuildInProgress, parseJsonObject, sampleFromSchema, sampleInputText, toolBody, toolSource, CONTEXT_FILE, type ToolFormState } from './toolForm';

const base: ToolFormState = {
  kind: 'script', name: ' wc ', description: 'Count', script: 'print(1)', dockerfile: 'FROM x', contextFile: 'print(2)',
  image: ' ghcr.io/a/b:1 ', input: '{"type":"object"}', output: '{"type":"object"}',
};

describe('sampleFromSchema', () => {
  it('fills every property with an empty value of its type', () => {
    expect(sampleFromSchema({
      type: 'object',
      properties: { text: { type: 'string' }, n: { type: 'integer' }, x: { type: 'number', minimum: 2 }, on: { type: 'boolean' }, tags: { type: 'array' }, z: { type: 'null' } },
    })).toEqual({ text: '', n: 0, x: 2, on: false, tags: [], z: null });
  });
  it('prefers default, const, examples and enum, and recurses into nested objects', () => {
    expect(sampleFromSchema({
      properties: {
        lang: { type: 'string', default: 'en' }, v: { const: 3 }, q: { type: 'string', examples: ['tide mills'] },
        mode: { enum: ['fast', 'slow'] }, opts: { type: 'object', properties: { deep: { type: ['null', 'string'] } } },
        alt: { anyOf: [{ type: 'integer' }, { type: 'string' }] },
      },
    })).toEqual({ lang: 'en', v: 3, q: 'tide mills', mode: 'fast', opts: { deep: '' }, alt: 0 });
  });
  it('gives null for what it cannot read, and stops on deep recursion', () => {
    expect(sampleFromSchema(undefined)).toBeNull();
    expect(sampleFromSchema([])).toBeNull();
    expect(sampleFromSchema({})).toBeNull();
    const loop: Record<string, unknown> = { type: 'object', properties: {} };
    (loop.properties as Record<string, unknown>).self = loop;
    expect(JSON.stringify(sampleFromSchema(loop))).toContain('"self":{"self"');
  });
  it('prints a JSON object for the test form, {} when the schema says nothing', () => {
    expect(JSON.parse(sampleInputText({ type: 'object', properties: { text: { type: 'string' } } }))).toEqual({ text: '' });
    expect(sampleInputText({})).toBe('{}');
  });
});

describe('toolBody', () => {
  it('sends only the chosen source', () => {
    expect(toolBody(base)).toEqual({ name: 'wc', description: 'Count', input_schema: { type: 'object' }, output_schema: { type: 'object' }, script: 'print(1)' });
    const img = toolBody({ ...base, kind: 'image' });
    expect(img.docker_image).toBe('ghcr.io/a/b:1');
    expect(img.script).toBeUndefined();
    expect(img.dockerfile).toBeUndefined();
    const df = toolBody({ ...base, kind: 'dockerfile' });
    expect(df).toMatchObject({ dockerfile: 'FROM x', context: { [CONTEXT_FILE]: 'print(2)' } });
    expect(df.script).toBeUndefined();
    expect(toolBody({ ...base, kind: 'dockerfile', contextFile: '  ' }).context).toBeUndefined();
  });
  it('names the schema that is not a JSON object', () => {
    expect(() => toolBody({ ...base, input: '{' })).toThrow(/^input schema: /);
    expect(() => toolBody({ ...base, output: '[1]' })).toThrow('output schema: must be a JSON object');
    expect(() => parseJsonObject('x', 'null')).toThrow('x: must be a JSON object');
  });
});

describe('build helpers', () => {
  it('polls only queued and building', () => {
    expect(['queued', 'building'].map(isBuildInProgress)).toEqual([true, true]);
    expect(['registered', 'ready', 'failed', '', undefined, null].map(isBuildInProgress)).toEqual([false, false, false, false, false, false]);
  });
  it('describes the source', () => {
    expect(toolSource({ dockerfile: 'FROM a\nRUN b\n', docker_image: null, script: null })).toBe('Dockerfile (2 lines)');
    expect(toolSource({ dockerfile: null, docker_image: 'img:1', script: null })).toBe('img:1');
    expect(toolSource({ dockerfile: null, docker_image: null, script: 'import x\n\nprint()\n' })).toBe('Python script (2 lines)');
    expect(toolSource({ dockerfile: null, docker_image: null, script: null })).toBe('—');
  });
});
