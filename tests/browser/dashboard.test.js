// The live dashboard (GET /, src/net/dashboard.html) in a headless Chromium
// against the real engine (`tickwire demo`, started here on port 0 or a port
// picked free, killed by PID). Run by `node --test` (see ci.sh). Every wait is
// bounded (harness.js `T`).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { after, test } from 'node:test';
import { ARTIFACTS, T, freePort, jwtHs256, openBrowser, startEngine, tempDir, until } from './harness.js';

/** The page's default book variant (PROTOCOL §9), which the tests hold unless they pick another. */
const CHANNEL = { depth: 10, interval: 100, name: 'book.10@100ms' };

const cleanups = [];
after(async () => { for (const f of cleanups.reverse()) await f(); });

/** Engine + browser for one test, both torn down even when the test fails. */
async function setup(engineOpts = {}) {
  const engine = await startEngine(engineOpts);
  cleanups.push(() => engine.stop());
  const browser = await openBrowser();
  cleanups.push(() => browser.close());
  return { engine, browser, page: browser.page };
}

async function symbolsOf(engine) {
  const r = await fetch(engine.url + 'symbols', { signal: AbortSignal.timeout(T.start) });
  assert.equal(r.status, 200);
  const j = await r.json();
  return j.symbols.map(s => s.symbol);
}

/** Every card's state as the page shows it. */
function cards(page) {
  return page.$$eval('article.card', ns => ns.map(n => ({
    symbol: n.dataset.symbol,
    state: n.dataset.state,
    channel: n.dataset.channel,
    checksum: n.dataset.checksum,
    continuity: n.dataset.continuity,
    chanText: n.querySelector('.chan').textContent,
    ckText: n.querySelector('.ck').textContent,
    contText: n.querySelector('.cont').textContent,
    levels: [...n.querySelectorAll('.br')].map(r => [...r.querySelectorAll('span')].map(s => s.textContent).join(' ').trim()).filter(Boolean),
  })));
}

/** Unticks everything, then ticks `syms` in the symbol list. */
async function pick(page, syms) {
  await page.locator('#symlist input[type=checkbox]').first().waitFor({ timeout: T.live });
  await page.click('#selnone');
  for (const s of syms) await page.check(`#symlist input[value="${s}"]`, { timeout: T.live });
  await until(`cards for ${syms}`, async () => {
    const got = (await cards(page)).map(c => c.symbol).sort();
    return JSON.stringify(got) === JSON.stringify([...syms].sort());
  });
  for (const c of await cards(page)) assert.equal(c.channel, CHANNEL.name, 'a new card holds the default variant');
}

/** Sets a card's depth and interval pickers. */
async function choose(page, sym, { depth, interval }) {
  const card = `article.card[data-symbol="${sym}"]`;
  await page.selectOption(`${card} select.depth`, String(depth));
  await page.selectOption(`${card} select.ivl`, String(interval));
}

/** Waits until the cards of `syms` are live on `channel`, their checksums
 *  verified and prev_seq continuous, and returns them. */
async function live(page, syms, channel, ms = T.live) {
  return until(`${syms} live on ${channel}, checksum verified`, async () => {
    const cs = (await cards(page)).filter(c => syms.includes(c.symbol));
    const ok = cs.length === syms.length && cs.every(c => c.state === 'live' && c.channel === channel &&
      c.checksum === 'verified' && c.continuity === 'ok' && c.levels.length > 0);
    return ok ? cs : false;
  }, ms);
}

/** Waits until every book of `syms` shows levels other than `before`'s. */
async function booksMove(page, syms, channel) {
  const before = new Map((await live(page, syms, channel)).map(c => [c.symbol, c.levels.join('|')]));
  return until('every book to change', async () => {
    const cs = await live(page, syms, channel);
    return cs.every(c => c.levels.join('|') !== before.get(c.symbol)) ? cs : false;
  }, T.change);
}

/** Chromium logs a refused WebSocket or fetch as a console error: expected
 *  while the engine is down, nothing else is. */
const OUTAGE_NOISE = /WebSocket connection to .* failed|ERR_CONNECTION_REFUSED|Failed to load resource/;

test('the page loads without console errors; picked symbols show moving books, each card verified', async () => {
  const { engine, browser, page } = await setup();
  const syms = (await symbolsOf(engine)).slice(0, 3);
  await page.goto(engine.url, { timeout: T.live });
  await until('the connection open', () => page.$eval('#conn', n => n.dataset.state === 'live'));
  await pick(page, syms);
  const cs = await booksMove(page, syms, CHANNEL.name);
  for (const c of cs) {
    assert.equal(c.chanText, CHANNEL.name);
    assert.equal(c.ckText, 'checksum verified');
    assert.match(c.contText, /^prev_seq ok/);
    assert.ok(c.levels.length <= 10, `at most 10 rows shown (${c.levels.length})`);
  }
  assert.equal(await page.isHidden('#banner'), true, 'no connection banner while live');
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard.png'), fullPage: true, timeout: T.live });
  assert.deepEqual(browser.problems, []);
});

test('depth and interval pickers change each card\'s channel; books stay verified', async () => {
  const { engine, browser, page } = await setup();
  const [a, b] = (await symbolsOf(engine)).slice(0, 2);
  await page.goto(engine.url, { timeout: T.live });
  await pick(page, [a, b]);
  await live(page, [a, b], CHANNEL.name);
  await choose(page, a, { depth: 5, interval: 0 });
  await choose(page, b, { depth: 0, interval: 250 });
  const [ca] = await booksMove(page, [a], 'book.5');
  assert.ok(ca.levels.length <= 5, `book.5 shows at most 5 levels (${ca.levels.length})`);
  await booksMove(page, [b], 'book@250ms');
  await choose(page, a, { depth: 0, interval: 0 });
  await booksMove(page, [a], 'book');
  assert.deepEqual(browser.problems, []);
});

/** A copy of a protobuf `ServerMessage` frame holding a `BookDelta` (field 2)
 *  with its checksum (field 6, a varint) changed, or null if it has none. */
function corruptChecksum(frame) {
  const m = Buffer.from(frame);
  let pos = 0;
  const varint = () => { let v = 0, mul = 1, b; do { b = m[pos++]; v += (b & 0x7f) * mul; mul *= 128; } while (b & 0x80); return v; };
  if (varint() !== 0x12) return null;
  const end = varint() + pos;
  while (pos < end) {
    const tag = varint(), field = tag >>> 3, wt = tag & 7;
    if (wt === 0) {
      if (field === 6) { m[pos] ^= 0x01; return m; }   // the low bit of the first byte: another value, same length
      varint();
    } else if (wt === 2) {
      const n = varint();   // not `pos += varint()`: that adds to pos as it was before the length
      pos += n;
    }
    else if (wt === 1) pos += 8;
    else if (wt === 5) pos += 4;
    else return null;
  }
  return null;
}

test('a delta with a wrong checksum, then a lost delta: the card says so while it resyncs, then is verified again with its resyncs counted', async () => {
  const { engine, browser, page } = await setup();
  const [sym] = await symbolsOf(engine);
  // Between the page and the engine: `fault` spoils the next delta, then the
  // engine's answers are held back 1.5 s so that the resyncing state shows.
  let fault = null, held = null;
  const hold = ws => {
    held = [];
    setTimeout(() => { for (const x of held) ws.send(x); held = null; }, 1500);
  };
  await page.routeWebSocket(/\/ws$/, ws => {
    const server = ws.connectToServer();
    ws.onMessage(m => server.send(m));
    server.onMessage(m => {
      const delta = typeof m !== 'string' && m[0] === 0x12;
      if (held) { held.push(m); return; }
      if (delta && fault === 'checksum') {
        const bad = corruptChecksum(m);
        if (bad) { fault = null; ws.send(bad); hold(ws); return; }
      } else if (delta && fault === 'drop') {
        fault = 'after-drop';
        return;
      } else if (delta && fault === 'after-drop') {
        fault = null;
        ws.send(m);
        hold(ws);
        return;
      }
      ws.send(m);
    });
  });
  await page.goto(engine.url, { timeout: T.live });
  await pick(page, [sym]);
  await live(page, [sym], CHANNEL.name);
  const card = async () => (await cards(page))[0];
  const attr = name => page.$eval(`article.card[data-symbol="${sym}"]`, (n, k) => n.dataset[k], name);

  fault = 'checksum';
  await until('checksum mismatch -> resyncing shown', async () => {
    const c = await card();
    return c.checksum === 'mismatch' && c.ckText === 'checksum mismatch → resyncing' && c.state === 'resyncing' && c.levels.length === 0;
  }, T.change, 50);
  await live(page, [sym], CHANNEL.name);
  assert.equal(await attr('mismatches'), '1');
  assert.equal(await attr('resyncs'), '1');
  assert.match((await card()).contText, /^prev_seq ok · 1 resync$/);

  fault = 'drop';
  await until('prev_seq gap -> resyncing shown', async () => {
    const c = await card();
    return c.continuity === 'gap' && c.contText === 'prev_seq gap → resyncing' && c.state === 'resyncing';
  }, T.change, 50);
  const [c] = await booksMove(page, [sym], CHANNEL.name);
  assert.equal(c.ckText, 'checksum verified');
  assert.equal(c.contText, 'prev_seq ok · 2 resyncs');
  assert.equal(await attr('gaps'), '1');
  assert.deepEqual(browser.problems, []);
});

test('an engine killed and restarted on the same port: disconnected banner, then live again', async () => {
  const port = await freePort();
  let engine = await startEngine({ port });
  cleanups.push(() => engine.stop());
  const browser = await openBrowser();
  cleanups.push(() => browser.close());
  const { page } = browser;
  const syms = (await symbolsOf(engine)).slice(0, 2);
  await page.goto(engine.url, { timeout: T.live });
  await pick(page, syms);
  await booksMove(page, syms, CHANNEL.name);

  await engine.kill();
  await until('the disconnected banner', async () => {
    const banner = await page.$eval('#banner', n => !n.hidden && /Disconnected/.test(n.textContent));
    const cs = await cards(page);
    return banner && cs.length === syms.length && cs.every(c => c.state === 'disconnected');
  }, T.change);
  assert.notEqual(await page.$eval('#conn', n => n.dataset.state), 'live');

  engine = await startEngine({ port });
  await until('the connection open again', () => page.$eval('#conn', n => n.dataset.state === 'live'), T.reconnect);
  await booksMove(page, syms, CHANNEL.name);
  assert.equal(await page.isHidden('#banner'), true);
  const problems = browser.problems.filter(p => !OUTAGE_NOISE.test(p));
  assert.deepEqual(problems, []);
});

test('--auth required: the page works with a token from ?token= (sent in {"op":"auth"}), not without; a variant the token forbids is refused on its card', async () => {
  const dir = tempDir('tickwire-browser-auth-');
  cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
  const secret = randomBytes(32).toString('hex');
  fs.writeFileSync(path.join(dir, 'secret'), secret + '\n');
  const { engine, browser, page } = await setup({ args: ['--auth', 'required', '--jwt-secret-file', path.join(dir, 'secret')] });
  const syms = (await symbolsOf(engine)).slice(0, 2);

  // Without a token: no books, the page asks for one.
  await page.goto(engine.url, { timeout: T.live });
  await pick(page, syms);
  await until('cards unauthorized, the token field asking for one', async () =>
    (await page.$eval('#token', n => n.classList.contains('needed') && /requires a token/.test(n.title))) &&
    (await cards(page)).every(c => c.state === 'unauthorized'), T.change);

  const now = Math.floor(Date.now() / 1000);
  const token = jwtHs256(secret, { sub: 'browser-test', exp: now + 600, tw: { max_depth: 10, min_interval_ms: 100 } });
  const wsUrls = [];
  page.on('websocket', ws => wsUrls.push(ws.url()));
  await page.goto(engine.url + '?token=' + encodeURIComponent(token), { timeout: T.live });
  await pick(page, syms);
  await booksMove(page, syms, CHANNEL.name);
  assert.equal(await page.evaluate(() => location.search), '', 'the token is taken out of the address bar');
  assert.ok(wsUrls.length > 0 && wsUrls.every(u => !u.includes(token)), `the token stays out of the WebSocket URL: ${wsUrls}`);
  assert.match(await page.$eval('#token', n => n.title), /authenticated as browser-test/);

  // Deeper than the token's max_depth: refused (forbidden), said on the card, the other card live.
  const [a, b] = syms;
  await choose(page, a, { depth: 20, interval: 100 });
  await until('book.20@100ms refused on its card', async () => {
    const c = (await cards(page)).find(c => c.symbol === a);
    return c.state === 'refused' && c.channel === 'book.20@100ms' &&
      (await page.$eval(`article.card[data-symbol="${a}"] .stale`, n => !n.hidden && /refused \(forbidden/.test(n.textContent)));
  }, T.change);
  await live(page, [b], CHANNEL.name);
  await choose(page, a, { depth: 5, interval: 250 });
  await booksMove(page, [a], 'book.5@250ms');
  assert.deepEqual(browser.problems, []);
});
