// End-to-end test of the canvas in Debian's Chromium (playwright-core; no browser download).
//   CREWFLOW_URL=http://127.0.0.1:8000 npm run e2e
// The URL serves the SPA and the API on the same origin (a `crewflow serve` serving frontend/dist, or
// `vite preview`/`vite` proxying /api to one). Screenshots go to e2e/artifacts/.
// Flow: register → create an agent → draw input → agent → output → save → run → every node completed →
// read the output; then a viewer sees no edit or run controls and the API refuses the viewer's edit.

import { chromium } from 'playwright-core';
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const BASE = (process.env.CREWFLOW_URL ?? '').replace(/\/$/, '');
if (!BASE) {
  console.error('set CREWFLOW_URL to the server that serves the canvas, e.g. CREWFLOW_URL=http://127.0.0.1:8000');
  process.exit(2);
}
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const here = dirname(fileURLToPath(import.meta.url));
const ARTIFACTS = join(here, 'artifacts');
mkdirSync(ARTIFACTS, { recursive: true });
rmSync(join(ARTIFACTS, 'failure.png'), { force: true });

const results = [];
let currentPage = null;
async function step(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    results.push({ name, ok: true });
    console.log(`ok   ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    results.push({ name, ok: false });
    if (currentPage) await currentPage.screenshot({ path: join(ARTIFACTS, 'failure.png') }).catch(() => {});
    console.log(`FAIL ${name}: ${e && e.stack ? e.stack : e}`);
    throw e;
  }
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
    '--no-first-run', '--disable-quic', '--disable-sync'],
});
// chromium.launch() always starts from a fresh, empty profile of its own (a new temporary user data dir).
const suffix = Date.now().toString(36);
const admin = { email: `admin-${suffix}@example.com`, password: 'correct horse battery staple' };
const viewer = { email: `viewer-${suffix}@example.com`, password: 'viewer password 123' };
let flowUrl = '';
let exitCode = 0;

try {
  const context = await browser.newContext({ viewport: { width: 1500, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(15_000);
  currentPage = page;
  page.on('pageerror', (e) => console.log(`  [page error] ${e.message}`));
  const cspViolations = [];
  page.on('console', (m) => {
    if (/Content Security Policy/i.test(m.text())) cspViolations.push(m.text());
  });

  await step('register a tenant and land logged in', async () => {
    await page.goto(`${BASE}/#/register`);
    await page.fill('input[name=tenant_name]', `E2E team ${suffix}`);
    await page.fill('input[name=email]', admin.email);
    await page.fill('input[name=password]', admin.password);
    await page.click('button:has-text("Register and log in")');
    await page.waitForSelector('[data-testid=role]:has-text("admin")');
  });

  await step('create an agent', async () => {
    await page.click('a:has-text("Agents")');
    await page.click('button:has-text("New agent")');
    const form = page.locator('[data-testid=agent-form]');
    await form.locator('input[name=id]').fill('writer');
    await form.locator('input[name=role]').fill('Technical writer');
    await form.locator('input[name=goal]').fill('Explain things clearly');
    await form.locator('input[name=provider]').fill('scripted');
    await form.locator('button:has-text("Create agent")').click();
    await page.waitForSelector('[data-testid=agents-table] td:has-text("writer")');
  });

  await step('draw input → agent → output on the canvas', async () => {
    await page.click('a:has-text("Flows")');
    await page.click('a:has-text("New flow")');
    const canvas = page.locator('[data-testid=canvas]');
    await canvas.waitFor();
    const box = await canvas.boundingBox();
    const drop = async (kind, x, y) => {
      await page.locator(`[data-testid=palette-${kind}]`).dragTo(canvas, { targetPosition: { x, y } });
      await page.waitForSelector(`[data-kind=${kind}]`);
    };
    await drop('input', 150, box.height / 2);
    await drop('agent', 450, box.height / 2);
    await drop('output', 750, box.height / 2);
    // An agent node without agent and task is flagged before saving.
    await page.waitForSelector('[data-testid=node-agent][title*=missing_task]');
    const connect = async (from, to) => {
      const src = await page.locator(`[data-testid=node-${from}] .react-flow__handle.source`).boundingBox();
      const dst = await page.locator(`[data-testid=node-${to}] .react-flow__handle.target`).boundingBox();
      await page.mouse.move(src.x + src.width / 2, src.y + src.height / 2);
      await page.mouse.down();
      await page.mouse.move((src.x + dst.x) / 2, (src.y + dst.y) / 2, { steps: 5 });
      await page.mouse.move(dst.x + dst.width / 2, dst.y + dst.height / 2, { steps: 5 });
      await page.mouse.up();
    };
    await connect('start', 'agent');
    await connect('agent', 'result');
    await page.waitForFunction(() => document.querySelectorAll('.react-flow__edge').length === 2);

    await page.locator('[data-testid=node-agent]').click();
    const inspector = page.locator('[data-testid=inspector]');
    await inspector.locator('select[name=agent]').selectOption('writer');
    await inspector.locator('textarea[name=task]').fill('Write three sentences about {{ inputs.topic }}.');
    await page.waitForSelector('[data-testid=node-agent][data-problems="0"]');
    // A template reading an unknown node is flagged on the output node…
    await page.locator('[data-testid=node-result]').click();
    await inspector.locator('textarea[name=value]').fill('{{ nodes.nowhere.output }}');
    await page.waitForSelector('[data-testid=node-result][data-problems="1"]');
    // …and undo takes the edit back.
    await page.locator('button:has-text("Undo")').click();
    await page.waitForSelector('[data-testid=node-result][data-problems="0"]');
    // Keyboard delete and undo: remove the agent node (and its two edges), then bring it back.
    await page.locator('[data-testid=node-agent]').click();
    await page.keyboard.press('Delete');
    await page.waitForFunction(() => !document.querySelector('[data-testid=node-agent]') && document.querySelectorAll('.react-flow__edge').length === 0);
    await page.keyboard.press('Control+z');
    await page.waitForFunction(() => !!document.querySelector('[data-testid=node-agent]') && document.querySelectorAll('.react-flow__edge').length === 2);

    await page.locator('.react-flow__pane').click({ position: { x: 20, y: 20 } });
    await inspector.locator('input[name=flow-name]').fill(`E2E flow ${suffix}`);
    await inspector.locator('button:has-text("Add input")').click();
    const row = inspector.locator('input[placeholder=name]').first();
    await row.fill('topic');
    await inspector.locator('input[placeholder=default]').first().fill('tide mills');
    // A problem only the server finds (a template reading an undeclared input) lands on the node it names.
    await page.locator('[data-testid=node-result]').click();
    await inspector.locator('textarea[name=value]').fill('{{ inputs.nope }}');
    await page.waitForSelector('[data-testid=node-result][data-problems="0"]');
    await page.locator('button:has-text("Check")').click();
    await page.waitForSelector('[data-testid=node-result][title*=unknown_input]');
    await page.screenshot({ path: join(ARTIFACTS, 'server-problem.png') });
    await page.keyboard.press('Escape');
    await page.locator('.react-flow__pane').click({ position: { x: 20, y: 20 } });
    await page.keyboard.press('Control+z');
    await page.waitForSelector('[data-testid=node-result][data-problems="0"]');
    await page.locator('button:has-text("Auto-layout")').click();
  });

  await step('save as version 1', async () => {
    await page.click('[data-testid=save]');
    await page.waitForSelector('[data-testid=notice]:has-text("Saved as version 1")');
    flowUrl = page.url();
    await page.screenshot({ path: join(ARTIFACTS, 'editor.png') });
  });

  await step('run and watch every node turn completed', async () => {
    await page.click('[data-testid=run]');
    await page.waitForSelector('[data-testid=run-dialog]');
    await page.fill('input[name=input-topic]', 'tide mills');
    await page.click('[data-testid=start-run]');
    await page.waitForURL(/#\/executions\//);
    await page.waitForSelector('[data-testid=run-status][data-status=completed]', { timeout: 60_000 });
    for (const id of ['start', 'agent', 'result']) {
      await page.waitForSelector(`[data-testid=node-${id}][data-status=completed]`);
    }
    await page.waitForSelector('[data-testid=run-outputs]');
    await page.screenshot({ path: join(ARTIFACTS, 'live-run.png') });
  });

  await step('read the output of the agent node', async () => {
    await page.locator('[data-testid=node-agent]').click();
    const text = await page.locator('[data-testid=node-output]').innerText();
    if (!text.trim()) throw new Error('the agent node has no output');
    console.log(`  output: ${text.trim().slice(0, 100).replace(/\n/g, ' ')}…`);
    const outputs = await page.locator('[data-testid=node-panel]').innerText();
    if (!/LLM attempts \(\d+\)/.test(outputs)) throw new Error('no attempts section');
    await page.screenshot({ path: join(ARTIFACTS, 'node-output.png') });
  });

  await step('a dropped live connection resumes from last_seq, losing and repeating nothing', async () => {
    const urls = [];
    await page.routeWebSocket(/\/api\/v1\/ws\/executions\//, (ws) => {
      urls.push(ws.url());
      const server = ws.connectToServer();
      const first = urls.length === 1;
      let forwarded = 0;
      server.onMessage((m) => {
        if (!first) return ws.send(m);
        if (forwarded >= 3) return;
        ws.send(m);
        forwarded += 1;
        if (forwarded === 3) {
          ws.close({ code: 1011, reason: 'dropped by the test' });
          server.close();
        }
      });
    });
    await page.goto(flowUrl);
    await page.click('[data-testid=run]');
    await page.click('[data-testid=start-run]');
    await page.waitForURL(/#\/executions\//);
    await page.waitForSelector('[data-testid=run-status][data-status=completed]', { timeout: 60_000 });
    for (const id of ['start', 'agent', 'result']) await page.waitForSelector(`[data-testid=node-${id}][data-status=completed]`);
    if (urls.length !== 2 || !urls[0].endsWith('last_seq=0') || !urls[1].endsWith('last_seq=3')) throw new Error(`socket URLs: ${urls.join(' ')}`);
    await page.locator('[data-testid=node-agent]').click();
    const text = await page.locator('[data-testid=node-output]').innerText();
    if (!text.includes('tide mills')) throw new Error(`output after the reconnect: ${text}`);
    console.log(`  reconnected: ${urls.map((u) => u.split('?')[1]).join(' then ')}`);
  });

  await step('save a second version, then load the first one back', async () => {
    await page.goto(flowUrl);
    await page.waitForSelector('[data-testid=node-agent]');
    await page.locator('[data-testid=inspector] input[name=flow-name]').fill(`Renamed flow ${suffix}`);
    await page.click('[data-testid=save]');
    await page.waitForSelector('[data-testid=notice]:has-text("Saved as version 2")');
    await page.selectOption('[data-testid=versions]', '1');
    await page.waitForSelector(`[data-testid=flow-title]:has-text("E2E flow ${suffix}")`);
    await page.waitForSelector('[data-testid=notice]:has-text("Loaded version 1")');
    await page.click('button:has-text("Undo")');
    await page.waitForSelector(`[data-testid=flow-title]:has-text("Renamed flow ${suffix}")`);
  });

  await step('saving over someone else\'s newer version is refused (409) and said so', async () => {
    const other = await context.newPage();
    await other.goto(flowUrl);
    await other.waitForSelector('[data-testid=node-agent]');
    await other.locator('[data-testid=inspector] input[name=flow-description]').fill('edited in another tab');
    await other.click('[data-testid=save]');
    await other.waitForSelector('[data-testid=notice]:has-text("Saved as version 3")');
    await other.close();
    await page.locator('[data-testid=inspector] input[name=flow-description]').fill('edited here');
    await page.click('[data-testid=save]');
    await page.waitForSelector('[role=alert]:has-text("Someone saved a newer version")');
  });

  await step('admin: a provider key is write-only, the failover order is shown', async () => {
    await page.click('a:has-text("Providers")');
    // 'broken' answers nothing (a closed local port); 'offline' is the built-in scripted model, priced.
    const specs = [
      { name: 'broken', kind: 'openai', model: 'gpt-4o-mini', key: 'sk-test-1234567890abcd', base: 'http://127.0.0.1:9/v1' },
      { name: 'offline', kind: 'scripted', model: 'echo', price_in: '0.5', price_out: '1.5' },
    ];
    for (const p of specs) {
      await page.click('button:has-text("New provider")');
      const form = page.locator('[data-testid=provider-form]');
      await form.locator('input[name=name]').fill(p.name);
      await form.locator('select[name=kind]').selectOption(p.kind);
      await form.locator('input[name=model]').fill(p.model);
      if (p.key) await form.locator('input[name=api_key]').fill(p.key);
      if (p.base) await form.locator('input[name=base_url]').fill(p.base);
      if (p.price_in) await form.locator('input[name=price_in]').fill(p.price_in);
      if (p.price_out) await form.locator('input[name=price_out]').fill(p.price_out);
      await form.locator('button:has-text("Create provider")').click();
      await page.waitForSelector(`[data-testid=provider-${p.name}]`);
    }
    const row = await page.locator('[data-testid=provider-broken]').innerText();
    if (row.includes('sk-test-1234567890abcd') || !row.includes('abcd')) throw new Error(`the key column shows: ${row}`);
    // Drag the second row onto the first (providers of equal priority come in the server's order), moving
    // the mouse the way a person does; the UI and the server then both list them the other way round.
    const rowOrder = () => page.evaluate(() => [...document.querySelectorAll('[data-testid=providers-table] tbody tr')].map((r) => r.getAttribute('data-testid').replace('provider-', '')).join());
    const before = (await rowOrder()).split(',');
    const after = [before[1], before[0]].join();
    const from = await page.locator(`[data-testid=provider-${before[1]}] td`).nth(2).boundingBox();
    const to = await page.locator(`[data-testid=provider-${before[0]}] td`).nth(2).boundingBox();
    await page.mouse.move(from.x + from.width / 2, from.y + from.height / 2);
    await page.mouse.down();
    await page.mouse.move(from.x + from.width / 2 + 5, from.y + from.height / 2 - 5, { steps: 3 });
    await page.mouse.move(to.x + to.width / 2, to.y + to.height / 2, { steps: 10 });
    await page.mouse.up();
    await page.waitForFunction(async (want) => (await (await fetch('/api/v1/providers', { credentials: 'include' })).json()).items.map((p) => p.name).join() === want, after, { polling: 250 });
    if ((await rowOrder()) !== after) throw new Error(`the table shows ${await rowOrder()}, not ${after}`);
    await page.reload();
    await page.waitForSelector('[data-testid=providers-table] tbody tr');
    if ((await rowOrder()) !== after) throw new Error(`after a reload the table shows ${await rowOrder()}, not ${after}`);
    // The up/down buttons reorder too: put 'broken' first for the failover run below.
    if (after.startsWith('offline')) {
      await page.click('button[aria-label="move broken up"]');
      await page.waitForFunction(async () => (await (await fetch('/api/v1/providers', { credentials: 'include' })).json()).items.map((p) => p.name).join() === 'broken,offline', null, { polling: 250 });
    }
    await page.screenshot({ path: join(ARTIFACTS, 'providers.png') });
  });

  await step('failover live: the first provider fails, the second answers; attempts, tokens and cost shown', async () => {
    await page.click('a:has-text("Agents")');
    await page.click('button:has-text("New agent")');
    const form = page.locator('[data-testid=agent-form]');
    await form.locator('input[name=id]').fill('chained');
    await form.locator('input[name=role]').fill('Chained writer');
    await form.locator('input[name=goal]').fill('Answer through the provider chain');
    await form.locator('input[name=provider]').fill(''); // no provider: the tenant's failover chain
    await form.locator('button:has-text("Create agent")').click();
    await page.waitForSelector('[data-testid=agents-table] td:has-text("chained")');
    await page.click('a:has-text("Flows")');
    await page.click('button:has-text("Import…")');
    await page.fill('[data-testid=import-form] textarea', JSON.stringify({
      name: 'Failover demo', nodes: [{ id: 'start', kind: 'input' }, { id: 'ask', kind: 'agent', agent: 'chained', task: 'Say hello' }, { id: 'out', kind: 'output' }],
      edges: ['start -> ask', 'ask -> out'],
    }));
    await page.click('[data-testid=import-form] button:has-text("Import")');
    await page.waitForSelector('[data-testid=node-ask]');
    await page.click('[data-testid=run]');
    await page.click('[data-testid=start-run]');
    await page.waitForSelector('[data-testid=run-status][data-status=completed]', { timeout: 120_000 });
    await page.locator('[data-testid=node-ask]').click();
    const panel = await page.locator('[data-testid=node-panel]').innerText();
    for (const want of ['broken', 'connection', 'offline', 'success', 'Streamed tokens', 'failover']) {
      if (!panel.includes(want)) throw new Error(`the node panel lacks '${want}':\n${panel}`);
    }
    if (!/\$0\.0[1-9]|\$0\.[1-9]/.test(panel)) throw new Error(`no cost shown:\n${panel}`);
    await page.screenshot({ path: join(ARTIFACTS, 'failover-run.png') });
    // The event log pages through the server's cursor: 25 events, then the rest, in seq order, none twice.
    await page.click('button:has-text("Event log")');
    await page.waitForSelector('[data-testid=event-log] li[data-seq="25"]');
    if (await page.locator('[data-testid=event-log] li').count() !== 25) throw new Error('the first log page is not 25 events');
    await page.click('button:has-text("Load more")');
    await page.waitForSelector('[data-testid=event-log] li[data-seq="26"]');
    const seqs = await page.locator('[data-testid=event-log] li').evaluateAll((els) => els.map((e) => Number(e.dataset.seq)));
    if (seqs.some((v, i) => v !== i + 1)) throw new Error(`event log seqs: ${seqs.join(',')}`);
  });

  await step('crews and tools screens save through the API', async () => {
    await page.click('a:has-text("Crews")');
    await page.click('button:has-text("New crew")');
    const crew = page.locator('[data-testid=crew-form]');
    await crew.locator('input[name=id]').fill('team');
    await crew.locator('input[name=member-writer]').check();
    await crew.locator('select[name=task-0-agent]').selectOption('writer');
    await crew.locator('textarea[name=task-0-description]').fill('Write about {topic}');
    await crew.locator('button:has-text("Create crew")').click();
    await page.waitForSelector('[data-testid=crews-table] td:has-text("team")');
    await page.click('a:has-text("Tools")');
    await page.click('button:has-text("Register tool")');
    const tool = page.locator('[data-testid=tool-form]');
    await tool.locator('input[name=name]').fill('wordcount');
    await tool.locator('input[name=description]').fill('Count words');
    await tool.locator('button:has-text("Register")').click();
    await page.waitForSelector('[data-testid=tools-table] td:has-text("wordcount")');
    // The default is a Python script: it needs no build, so it is ready at once.
    await page.waitForSelector('[data-testid=tool-wordcount] [data-status=ready]');
  });

  await step('tools: a script tool tests from its schema, bad input is a 422 per field, a Dockerfile tool builds or says why not', async () => {
    const row = page.locator('[data-testid=tool-wordcount]');
    await row.locator('button:has-text("Test")').click();
    const test = page.locator('[data-testid=tool-test-form]');
    const prefilled = JSON.parse(await test.locator('textarea[name=input]').inputValue());
    if (JSON.stringify(prefilled) !== '{"text":""}') throw new Error(`test input prefilled as ${JSON.stringify(prefilled)}`);
    await test.locator('textarea[name=input]').fill('{}');
    await test.locator('button:has-text("Run test")').click();
    const problem = await test.locator('[role=alert]').innerText();
    if (!/\(422\)/.test(problem) || !/input/.test(problem) || !/text/.test(problem)) throw new Error(`422 shown as: ${problem}`);
    await test.locator('textarea[name=input]').fill('{"text": "three little words"}');
    await test.locator('button:has-text("Run test")').click();
    await test.locator('[data-testid=tool-test-result] [data-status]').waitFor({ timeout: 60_000 });
    const result = await test.locator('[data-testid=tool-test-result]').innerText();
    const ran = await test.locator('[data-testid=tool-test-result] [data-status]').getAttribute('data-status');
    if (ran !== 'completed') throw new Error(`the test run failed: ${result}`);
    const output = JSON.parse(await test.locator('[data-testid=test-output]').innerText());
    if (output.words !== 3) throw new Error(`test output: ${JSON.stringify(output)}`);
    if (!/\d+ ms/.test(result)) throw new Error(`no duration: ${result}`);
    await page.screenshot({ path: join(ARTIFACTS, 'tool-test.png') });

    await page.click('button:has-text("Register tool")');
    const form = page.locator('[data-testid=tool-form]');
    await form.locator('input[name=name]').fill('wcdocker');
    await form.locator('input[name=kind][value=dockerfile]').check();
    if (!(await form.locator('textarea[name=dockerfile]').inputValue()).startsWith('FROM crewflow/tool-base:bookworm')) throw new Error('no default Dockerfile');
    await form.locator('button:has-text("Register")').click();
    const drow = page.locator('[data-testid=tool-wcdocker]');
    await drow.locator('[data-status=registered]').waitFor();
    // Not built yet: a test run is a 409 the page spells out.
    await drow.locator('button:has-text("Test")').click();
    await test.locator('button:has-text("Run test")').click();
    const refused = await test.locator('[role=alert]').innerText();
    if (!/Conflict/.test(refused) || !/\(409\)/.test(refused) || !/has not been built/.test(refused)) throw new Error(`409 shown as: ${refused}`);
    await drow.locator('button:has-text("Build")').click();
    const status = page.locator('[data-testid=tool-status]');
    // Either the server queues the build (the status view then follows it to ready/failed) or, with no
    // Docker engine, refuses it with a 409 the page spells out.
    await status.locator('[role=alert], [data-status=ready], [data-status=failed]').first().waitFor({ timeout: 300_000 });
    const shown = await status.innerText();
    if (await status.locator('[role=alert]').count()) {
      if (!/Conflict/.test(shown) || !/\(409\)/.test(shown)) throw new Error(`build refusal shown as: ${shown}`);
    } else {
      const log = await status.locator('[data-testid=build-log]').innerText();
      if (!log.includes('FROM crewflow/tool-base:bookworm')) throw new Error(`build log: ${log}`);
      if (await status.locator('[data-status=ready]').count()) {
        await drow.locator('[data-status=ready]').waitFor(); // the table follows the finished build
        if (!/image: \S+/.test(shown)) throw new Error(`no image shown: ${shown}`);
        await drow.locator('button:has-text("Test")').click();
        await test.locator('textarea[name=input]').fill('{"text": "one two"}');
        await test.locator('button:has-text("Run test")').click();
        await test.locator('[data-testid=tool-test-result] [data-status=completed]').waitFor({ timeout: 120_000 });
        const built = JSON.parse(await test.locator('[data-testid=test-output]').innerText());
        if (built.words !== 2) throw new Error(`built tool output: ${JSON.stringify(built)}`);
      }
    }
    await page.screenshot({ path: join(ARTIFACTS, 'tool-build.png') });
  });

  await step('the run is in the executions history', async () => {
    await page.goto(flowUrl.replace(/#\/flows\/(.*)$/, '#/flows/$1/executions'));
    await page.waitForSelector('[data-testid=executions-table] [data-status=completed]');
  });


  await step('import the example flow and run it', async () => {
    await page.click('a:has-text("Flows")');
    await page.click('button:has-text("Import…")');
    await page.click('button:has-text("Use the example")');
    await page.click('[data-testid=import-form] button:has-text("Import")');
    await page.waitForSelector('[data-testid=node-article]');
    const problems = await page.locator('[data-testid=canvas] [data-problems]:not([data-problems="0"])').count();
    if (problems) throw new Error(`${problems} node(s) with problems after import`);
    await page.click('[data-testid=run]');
    await page.click('[data-testid=start-run]');
    await page.waitForSelector('[data-testid=run-status][data-status=completed]', { timeout: 60_000 });
    const out = await page.locator('[data-testid=run-outputs]').innerText();
    if (!out.includes('tide mills')) throw new Error(`outputs: ${out}`);
  });

  await step('a router flow: the branch not taken turns skipped, the join completes', async () => {
    await page.click('a:has-text("Flows")');
    await page.click('button:has-text("Import…")');
    await page.fill('[data-testid=import-form] textarea', readFileSync(join(here, '..', '..', 'examples', 'router.yaml'), 'utf8'));
    await page.click('[data-testid=import-form] button:has-text("Import")');
    await page.waitForSelector('[data-testid=node-route]');
    await page.waitForSelector('.react-flow__edge-text:has-text("default")');
    await page.locator('[data-testid=node-route]').click();
    const routeTo = await page.locator('[data-testid=inspector] select[name=route-0-to]').inputValue();
    if (routeTo !== 'escalate') throw new Error(`route 0 goes to ${routeTo}`);
    await page.click('[data-testid=run]');
    await page.click('[data-testid=start-run]');
    await page.waitForSelector('[data-testid=run-status][data-status=completed]', { timeout: 60_000 });
    await page.waitForSelector('[data-testid=node-escalate][data-status=skipped]');
    for (const id of ['start', 'classify', 'route', 'standard_reply', 'reply']) await page.waitForSelector(`[data-testid=node-${id}][data-status=completed]`);
    await page.screenshot({ path: join(ARTIFACTS, 'router-run.png') });
  });

  await step('a viewer sees no edit or run controls, and the API refuses an edit', async () => {
    await page.click('a:has-text("Users")');
    await page.click('button:has-text("Add user")');
    const form = page.locator('[data-testid=invite-form]');
    await form.locator('input[name=email]').fill(viewer.email);
    await form.locator('select[name=role]').selectOption('viewer');
    await form.locator('input[name=password]').fill(viewer.password);
    await form.locator('button:has-text("Add user")').click();
    await page.waitForSelector(`[data-testid=users-table] td:has-text("${viewer.email}")`);
    await page.click('button:has-text("Log out")');
    await page.waitForSelector('input[name=email]');
    await page.fill('input[name=email]', viewer.email);
    await page.fill('input[name=password]', viewer.password);
    await page.click('button:has-text("Log in")');
    await page.waitForSelector('[data-testid=role]:has-text("viewer")');
    await page.goto(flowUrl);
    await page.waitForSelector('[data-testid=node-agent]');
    for (const sel of ['[data-testid=palette]', '[data-testid=save]', '[data-testid=run]', 'button:has-text("Undo")']) {
      if (await page.locator(sel).count()) throw new Error(`a viewer sees ${sel}`);
    }
    await page.locator('[data-testid=node-agent]').click();
    if (!(await page.locator('[data-testid=inspector] textarea[name=task]').isDisabled())) throw new Error('the task is editable');
    await page.screenshot({ path: join(ARTIFACTS, 'viewer.png') });
    const flowId = decodeURIComponent(flowUrl.split('#/flows/')[1]);
    const refused = await page.evaluate(async (id) => {
      const r = await fetch(`/api/v1/flows/${encodeURIComponent(id)}/execute`, { method: 'POST', credentials: 'include', headers: { 'Content-Type': 'application/json' }, body: '{}' });
      return r.status;
    }, flowId);
    if (refused !== 403) throw new Error(`a viewer's execute answered ${refused}, not 403`);
    await page.click('a:has-text("Agents")');
    await page.waitForSelector('[data-testid=agents-table] td:has-text("writer")');
    if (await page.locator('button:has-text("New agent")').count()) throw new Error('a viewer sees New agent');
    if (await page.locator('nav a:has-text("Tools")').count()) throw new Error('a viewer sees the Tools link');
    await page.goto(`${BASE}/#/tools`);
    await page.waitForSelector('text=Only admins register tools.');
    for (const sel of ['button:has-text("Register tool")', '[data-testid=tool-test-form]', '[data-testid=tools-table]']) {
      if (await page.locator(sel).count()) throw new Error(`a viewer sees ${sel} on Tools`);
    }
  });
  await step('no Content-Security-Policy violation on any screen', async () => {
    if (cspViolations.length) throw new Error(cspViolations.slice(0, 3).join('\n'));
  });
} catch {
  exitCode = 1;
} finally {
  await browser.close();
}
const passed = results.filter((r) => r.ok).length;
console.log(`${passed} passed, ${results.length - passed} failed`);
process.exit(exitCode);
