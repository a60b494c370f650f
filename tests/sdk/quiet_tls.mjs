// Quiet connections through TLS terminators (started by tests/tests/tls_proxies.rs with
// the configs in tuning/tls/): for each terminator, a WebSocket that subscribes and then
// sends nothing (no pings: `ws` sends none unless asked, and the test's ringcast has its
// idle pings off, `idle_timeout_secs = 0`) and an
// SSE stream (which hears only ringcast's `:ping` comments) stay quiet for QUIET_MS,
// longer than nginx's 60 s default proxy_read_timeout; then one HTTP publish through the
// same terminator must reach both. A terminator whose idle timeout were below QUIET_MS
// would have closed them.
//
// The certificates are self-signed: the test passes them in NODE_EXTRA_CA_CERTS.
//
// Usage: node tests/sdk/quiet_tls.mjs QUIET_MS https://127.0.0.1:PORT [https://...]
// Exit 0 on success; non-zero with a message on stderr otherwise.

import { WebSocket } from 'ws';
import { EventSource } from 'eventsource';

const [quietArg, ...bases] = process.argv.slice(2);
const QUIET_MS = Number(quietArg);
if (!Number.isFinite(QUIET_MS) || bases.length === 0) {
  console.error('usage: node quiet_tls.mjs QUIET_MS https://HOST:PORT [https://HOST:PORT ...]');
  process.exit(2);
}
const OVERALL_TIMEOUT_MS = QUIET_MS + 20000;
setTimeout(() => {
  console.error(`quiet_tls: timed out after ${OVERALL_TIMEOUT_MS} ms`);
  process.exit(3);
}, OVERALL_TIMEOUT_MS).unref();

function within(promise, ms, what) {
  return Promise.race([
    promise,
    new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms)),
  ]);
}

/** A subscribed WebSocket through `base`; `closed` says whether (and how) it closed. */
async function quietWebSocket(base, channel) {
  // From 127.0.0.2: ringcast runs with max_connections_per_ip = 1 behind the proxy, and
  // the SSE stream comes from 127.0.0.1.
  const endpoint = `${base.replace(/^https/, 'wss')}/_rt/ws?cid=quiet-ws`;
  const ws = new WebSocket(endpoint, { localAddress: '127.0.0.2' });
  const state = { messages: [], closed: null };
  ws.on('close', (code) => { state.closed = `closed with ${code}`; });
  ws.on('error', (e) => { state.closed = `error ${e.message}`; });
  const subscribed = new Promise((resolve) => {
    ws.on('message', (raw) => {
      const event = JSON.parse(raw.toString());
      state.messages.push(event);
      if (event.event === 'subscribed') resolve();
    });
  });
  await within(new Promise((resolve, reject) => {
    ws.on('open', resolve);
    ws.on('error', reject);
  }), 5000, `${base}: WebSocket open`);
  ws.send(JSON.stringify({ action: 'subscribe', channel }));
  await within(subscribed, 5000, `${base}: subscribed`);
  return { ws, state };
}

/** An SSE stream through `base`, open. */
async function quietStream(base) {
  const es = new EventSource(`${base}/api/maravilla/ren?s=realtime&cid=quiet-sse`);
  const state = { events: [], closed: null };
  es.addEventListener('realtime.message', (e) => state.events.push(JSON.parse(e.data)));
  es.onerror = () => { state.closed = `error (readyState ${es.readyState})`; };
  await within(new Promise((resolve) => { es.onopen = resolve; }), 5000, `${base}: SSE open`);
  return { es, state };
}

async function publish(base, channel) {
  const res = await fetch(`${base}/api/realtime/publish`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ channel, data: { after: 'quiet' } }),
  });
  if (res.status !== 200) throw new Error(`${base}: publish answered ${res.status}: ${await res.text()}`);
}

async function untilDelivered(base, ws, sse) {
  const deadline = Date.now() + 5000;
  const got = () => ws.state.messages.some((e) => e.event === 'realtime.message')
    && sse.state.events.length > 0;
  while (!got() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  if (!got()) {
    throw new Error(`${base}: the publish after the quiet time did not arrive: `
      + JSON.stringify({ ws: ws.state, sse: sse.state }));
  }
}

async function main() {
  const channel = `quiet-${process.pid}`;
  const opened = [];
  for (const base of bases) {
    opened.push({ base, ws: await quietWebSocket(base, channel), sse: await quietStream(base) });
  }
  await new Promise((r) => setTimeout(r, QUIET_MS));
  for (const { base, ws, sse } of opened) {
    if (ws.state.closed) throw new Error(`${base}: the quiet WebSocket ${ws.state.closed}`);
    if (sse.state.closed) throw new Error(`${base}: the quiet SSE stream ${sse.state.closed}`);
    await publish(base, channel);
    await untilDelivered(base, ws, sse);
    ws.ws.close();
    sse.es.close();
  }
  console.log(`quiet_tls: ok (${bases.length} terminators, ${QUIET_MS} ms quiet)`);
}

main().then(() => process.exit(0), (e) => {
  console.error(`quiet_tls: FAIL: ${e.stack || e}`);
  process.exit(1);
});
