// Headless check of the React page: at least one <OrderBook> card shows a
// verified book with levels on both sides, and the page logs no console error.
//
//   node check.mjs                 CI: starts `tickwire demo` (TICKWIRE_BIN) and
//                                  `vite preview` of ./dist (run `vite build`
//                                  first), each on a free port, checks the page,
//                                  kills both by PID.
//   node check.mjs --url URL       only checks a page already served at URL
//                                  (e.g. `npm run dev`'s http://localhost:5173/).
//
// The system Chromium (CHROMIUM, default /usr/bin/chromium) with the launch
// flags of tests/browser/harness.js; never a downloaded browser. Every wait is
// bounded (T, in ms).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '../../../..');
const BIN = process.env.TICKWIRE_BIN || path.join(process.env.CARGO_TARGET_DIR || path.join(REPO, 'target'), 'release/tickwire');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const T = { start: 20_000, live: 20_000, stop: 6_000 };
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

const sleep = ms => new Promise(r => setTimeout(r, ms));
const log = (...a) => console.log('[react-check]', ...a);

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

/** Spawns argv, collecting output; `stop()` sends SIGTERM, then SIGKILL after T.stop, by PID. */
function start(name, cmd, args, opts = {}) {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
  const p = { name, child, out: '' };
  const keep = d => { p.out = (p.out + d).slice(-8000); };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  p.exited = new Promise(r => child.once('exit', (code, sig) => r({ code, sig })));
  p.stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    process.kill(child.pid, 'SIGTERM');
    if (await Promise.race([p.exited, sleep(T.stop).then(() => null)])) return;
    process.kill(child.pid, 'SIGKILL');
    if (!(await Promise.race([p.exited, sleep(T.stop).then(() => null)]))) throw new Error(`${name} (pid ${child.pid}) survived SIGKILL`);
  };
  log(`started ${name}: pid ${child.pid}`);
  return p;
}

/** Polls `fn` (async, truthy = done) every `every` ms for at most `ms`. */
async function until(what, fn, ms, every = 200) {
  const end = Date.now() + ms;
  let last;
  for (;;) {
    try { last = await fn(); if (last) return last; } catch (e) { last = e; }
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    await sleep(every);
  }
}

async function checkPage(url) {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM} (apt-get install -y chromium, or set CHROMIUM)`);
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'tickwire-react-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, viewport: { width: 1400, height: 1000 }, timeout: T.start,
  });
  try {
    context.setDefaultTimeout(T.live);
    const page = context.pages()[0] || await context.newPage();
    const problems = [];
    page.on('console', m => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
    page.on('pageerror', e => problems.push(`pageerror: ${e.message}`));
    await page.goto(url, { timeout: T.start });
    const cards = await until('a card with a verified book and levels on both sides', async () => {
      const all = await page.$$eval('section.card', els => els.map(e => ({
        symbol: e.dataset.symbol, verified: e.dataset.verified, status: e.dataset.status,
        badge: e.querySelector('.badge')?.textContent,
        bids: e.querySelectorAll('table.bids tr').length, asks: e.querySelectorAll('table.asks tr').length,
      })));
      return all.some(c => c.verified === 'true' && c.bids > 0 && c.asks > 0) && all;
    }, T.live);
    // A moment more for late errors (a failed check, a closed socket).
    await sleep(1000);
    for (const c of cards) log(`card ${c.symbol}: ${c.badge} (status ${c.status}), ${c.bids} bids, ${c.asks} asks`);
    if (problems.length) throw new Error(`console errors on the page:\n  ${problems.join('\n  ')}`);
    log(`OK: ${cards.filter(c => c.verified === 'true').length}/${cards.length} cards verified with levels, no console error`);
  } finally {
    await Promise.race([context.close(), sleep(T.stop)]);
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

async function main() {
  const i = process.argv.indexOf('--url');
  if (i > 0) return checkPage(process.argv[i + 1]);

  if (!fs.existsSync(BIN)) throw new Error(`no tickwire binary at ${BIN}: build it (cargo build --release) or set TICKWIRE_BIN`);
  if (!fs.existsSync(path.join(HERE, 'dist/index.html'))) throw new Error('no dist/index.html: run `npx vite build` first');
  const running = [];
  try {
    const engine = start('tickwire demo', BIN, ['demo', '--listen', '127.0.0.1:0', '--ingest', '127.0.0.1:0', '--ingest-json', '127.0.0.1:0',
      '--workers', '1', '--symbols', '8', '--rate', '400'], { env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' } });
    running.push(engine);
    const addr = await until('the engine to print "listening on"', () => {
      if (engine.child.exitCode !== null) throw new Error(`tickwire exited: ${engine.out}`);
      return /listening on (\S+)/.exec(engine.out)?.[1];
    }, T.start, 50);

    const port = await freePort();
    const preview = start('vite preview', process.execPath,
      [path.join(HERE, 'node_modules/vite/bin/vite.js'), 'preview', '--host', '127.0.0.1', '--port', String(port), '--strictPort'],
      { cwd: HERE, env: { ...process.env, TICKWIRE_URL: `http://${addr}` } });
    running.push(preview);
    const url = `http://127.0.0.1:${port}/`;
    await until(`${url}symbols through the preview proxy`, async () => {
      if (preview.child.exitCode !== null) throw new Error(`vite preview exited: ${preview.out}`);
      const r = await fetch(`${url}symbols`, { signal: AbortSignal.timeout(2000) });
      return r.ok && (await r.json()).symbols.length > 0;
    }, T.start);
    log(`engine ${addr}, page ${url}`);
    await checkPage(url);
  } finally {
    for (const p of running.reverse()) await p.stop();
  }
}

main().then(() => process.exit(0), e => { console.error('[react-check] FAIL:', e.message); process.exit(1); });
