// Runs the e2e test against a fresh local server: starts `crewflow serve` (from ../.venv, or CREWFLOW_BIN) on a
// free port with a throw-away data dir, and — unless that server already serves the built canvas at `/` —
// `vite preview` of frontend/dist proxying /api to it. Then runs e2e/run.mjs and stops what it started.
//   npm run build && npm run e2e:local

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync, mkdirSync, openSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const frontend = resolve(here, '..');
const repo = resolve(frontend, '..');
const bin = process.env.CREWFLOW_BIN ?? join(repo, '.venv', 'bin', 'crewflow');
if (!existsSync(join(frontend, 'dist', 'index.html'))) {
  console.error('frontend/dist is missing: run `npm run build` first');
  process.exit(2);
}

const freePort = () => new Promise((ok, fail) => {
  const s = createServer();
  s.once('error', fail);
  s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => ok(port)); });
});

async function waitFor(url, ms = 60_000) {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    try {
      const r = await fetch(url);
      if (r.status < 500) return r;
    } catch { /* not up yet */ }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`${url} did not answer within ${ms} ms`);
}

mkdirSync(join(here, 'artifacts'), { recursive: true });
const log = openSync(join(here, 'artifacts', 'servers.log'), 'w'); // server output, kept out of the test's
const children = [];
const start = (cmd, args, env) => {
  const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', log, log] });
  children.push(child);
  return child;
};
const dataDir = mkdtempSync(join(tmpdir(), 'crewflow-e2e-data-'));
let code = 1;
try {
  const apiPort = await freePort();
  start(bin, ['serve', '--port', String(apiPort)], { CREWFLOW_DATA_DIR: dataDir });
  const api = `http://127.0.0.1:${apiPort}`;
  await waitFor(`${api}/healthz`);
  let url = api;
  const root = await fetch(`${api}/`).then(async (r) => (r.ok ? r.text() : '')).catch(() => '');
  if (!root.includes('id="root"')) {
    const uiPort = await freePort();
    start(join(frontend, 'node_modules', '.bin', 'vite'), ['preview', '--port', String(uiPort), '--strictPort', '--host', '127.0.0.1'], { CREWFLOW_API: api });
    url = `http://127.0.0.1:${uiPort}`;
    await waitFor(`${url}/`);
    console.log(`(the server does not serve the canvas yet: using vite preview at ${url}, proxying /api to ${api})`);
  }
  const test = spawn(process.execPath, [join(here, 'run.mjs')], { env: { ...process.env, CREWFLOW_URL: url }, stdio: 'inherit' });
  code = await new Promise((ok) => test.on('exit', (c) => ok(c ?? 1)));
} catch (e) {
  console.error(e);
} finally {
  for (const c of children.reverse()) if (c.exitCode === null) c.kill('SIGTERM');
  await new Promise((r) => setTimeout(r, 500));
  rmSync(dataDir, { recursive: true, force: true });
}
process.exit(code);
