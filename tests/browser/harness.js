// The pieces every browser test shares: a free port, the real engine
// (`tickwire demo`) started and killed by PID, a headless Chromium with a
// fresh profile, HS256 tokens, and bounded waits. No test waits unbounded.

import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(HERE, '../..');
export const BIN = process.env.TICKWIRE_BIN || path.join(REPO, 'target/release/tickwire');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const ARTIFACTS = path.join(HERE, 'artifacts');

/** Bounds (ms). Generous: the machine may be shared and slow. */
export const T = { start: 20_000, live: 20_000, change: 15_000, reconnect: 40_000, stop: 6_000 };

export const sleep = ms => new Promise(r => setTimeout(r, ms));

/** A port free right now on 127.0.0.1 (bound to 0, read, closed). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** A fresh directory under the OS temp dir, removed by `cleanup()`. */
export function tempDir(prefix) {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/**
 * Starts `tickwire demo` (engine + synthetic feed) on 127.0.0.1:`port` (0: any)
 * and resolves once it prints `listening on ADDR`. `kill()` sends SIGKILL (a
 * crash), `stop()` SIGTERM then SIGKILL after T.stop; both by PID and bounded.
 */
export async function startEngine({ port = 0, args = [] } = {}) {
  if (!fs.existsSync(BIN)) throw new Error(`no tickwire binary at ${BIN}: build it (cargo build --release) or set TICKWIRE_BIN`);
  const argv = ['demo', '--listen', `127.0.0.1:${port}`, '--ingest', '127.0.0.1:0', '--ingest-json', '127.0.0.1:0',
    '--workers', '1', '--symbols', '8', '--rate', '400', ...args];
  const child = spawn(BIN, argv, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' } });
  let out = '', err = '';
  const exited = new Promise(r => child.once('exit', (code, sig) => r({ code, sig })));
  child.stderr.on('data', d => { err = (err + d).slice(-8000); });
  const addr = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`tickwire did not print "listening on" within ${T.start} ms\n${out}\n${err}`)), T.start);
    child.stdout.on('data', d => {
      out += d;
      const m = /listening on (\S+)/.exec(out);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    });
    exited.then(({ code, sig }) => { clearTimeout(timer); reject(new Error(`tickwire exited (${code ?? sig}) before listening\n${err}`)); });
  });
  child.stdout.resume();
  const waitExit = async ms => Promise.race([exited, sleep(ms).then(() => null)]);
  const engine = {
    pid: child.pid,
    addr,
    url: `http://${addr}/`,
    stderr: () => err,
    exited,
    async kill() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      process.kill(child.pid, 'SIGKILL');
      if (!(await waitExit(T.stop))) throw new Error(`tickwire ${child.pid} survived SIGKILL for ${T.stop} ms`);
    },
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      process.kill(child.pid, 'SIGTERM');
      if (!(await waitExit(T.stop))) await engine.kill();
    },
  };
  return engine;
}

const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

/**
 * A headless Chromium (the system one; never a downloaded browser) with a
 * fresh profile, and one page whose console errors and uncaught exceptions
 * are collected in `problems`. `close()` removes the profile.
 */
export async function openBrowser() {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM}: run tests/browser/ci.sh, or apt-get install -y chromium`);
  const profile = tempDir('tickwire-chromium-');
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1400, height: 1000 },
    timeout: T.start,
  });
  context.setDefaultTimeout(T.live);
  const page = context.pages()[0] || await context.newPage();
  const problems = [];
  page.on('console', m => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
  page.on('pageerror', e => problems.push(`pageerror: ${e.message}`));
  return {
    page,
    problems,
    async close() {
      await Promise.race([context.close(), sleep(T.stop)]);
      fs.rmSync(profile, { recursive: true, force: true });
    },
  };
}

const b64url = b => Buffer.from(b).toString('base64url');

/** An HS256 JWT (RFC 7519) of `claims`, signed with `secret` by node:crypto. */
export function jwtHs256(secret, claims) {
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify(claims));
  const sig = crypto.createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

/** Polls `fn` (async, truthy = done) every `every` ms for at most `ms`. */
export async function until(what, fn, ms = T.live, every = 100) {
  const end = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    await sleep(every);
  }
}

/**
 * A TCP proxy on 127.0.0.1 (port 0) in front of `target` ("host:port"), for
 * injecting faults between a page and the engine. Records every connection's
 * request bytes as text (`conns[i].request`, the first 16 KiB), so that a test
 * can see which requests (and headers) a connection carried, and
 * `cut(pred)` destroys both sides of the connections `pred` selects (an
 * abrupt close, as a dropped network would be). `rewriteRequest`, when set,
 * maps each chunk the client sends (as latin1 text) before it goes on (for
 * requests that fit one chunk, e.g. to drop a header). `close()` stops it.
 */
export async function startProxy(target) {
  const [host, port] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
  const conns = [];
  const proxy = { rewriteRequest: null };
  const server = net.createServer(client => {
    const upstream = net.connect({ host, port });
    const conn = { client, upstream, request: '', cut: false };
    conns.push(conn);
    client.on('data', d => {
      let text = d.toString('latin1');
      if (proxy.rewriteRequest) text = proxy.rewriteRequest(text, conn);
      if (conn.request.length < 16384) conn.request += text;
      if (!upstream.write(Buffer.from(text, 'latin1'))) { client.pause(); upstream.once('drain', () => client.resume()); }
    });
    upstream.pipe(client);
    const end = () => { client.destroy(); upstream.destroy(); };
    client.on('error', end);
    upstream.on('error', end);
    client.on('close', end);
    upstream.on('close', end);
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const addr = `127.0.0.1:${server.address().port}`;
  return Object.assign(proxy, {
    addr,
    url: `http://${addr}/`,
    conns,
    /** Destroys the open connections `pred(conn)` selects; returns how many. */
    cut(pred = () => true) {
      let n = 0;
      for (const c of conns) {
        if (c.cut || c.client.destroyed || !pred(c)) continue;
        c.cut = true;
        c.client.destroy();
        c.upstream.destroy();
        n += 1;
      }
      return n;
    },
    async close() {
      for (const c of conns) { c.client.destroy(); c.upstream.destroy(); }
      await Promise.race([new Promise(r => server.close(r)), sleep(T.stop)]);
    },
  });
}
