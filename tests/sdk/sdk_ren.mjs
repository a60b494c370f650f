// Runs the official SDK's RenClient (@maravilla-labs/platform) against a running ringcast
// server: two clients with different subscriptions receive filtered REN events (app events
// pushed with the SDK's renFetch, which adds X-Ren-Client, and mirrored channel
// publishes, one of them through renFetch and one through the SDK's RealtimeClient, whose
// WebSocket carries the same client id as `cid`), and each drops its own writes by
// comparing `src` with getClientId(), as the seed shows.
//
// Usage: node tests/sdk/sdk_ren.mjs http://127.0.0.1:PORT
// Exit 0 on success; non-zero with a message on stderr otherwise.

import { EventSource } from 'eventsource';
import { WebSocket } from 'ws';
import { RealtimeClient, RenClient, renFetch } from '@maravilla-labs/platform';

// Node 20 has no global EventSource or WebSocket; the SDK uses the global ones.
globalThis.EventSource = EventSource;
globalThis.WebSocket = WebSocket;

const OVERALL_TIMEOUT_MS = 15000;
const base = process.argv[2];
if (!base) {
  console.error('usage: node sdk_ren.mjs http://HOST:PORT');
  process.exit(2);
}
const overall = setTimeout(() => {
  console.error(`sdk_ren: timed out after ${OVERALL_TIMEOUT_MS} ms`);
  process.exit(3);
}, OVERALL_TIMEOUT_MS);

function fail(message) {
  console.error(`sdk_ren: FAIL: ${message}`);
  process.exit(1);
}

// A RenClient and what reached its listener: `raw` is everything the SDK forwarded,
// `others` what is left after dropping its own writes.
function client(clientId, subscriptions) {
  const ren = new RenClient({
    endpoint: `${base}/api/maravilla/ren`,
    subscriptions,
    clientId,
    autoReconnect: false,
  });
  const seen = { ren, raw: [], others: [], waiters: [], rawWaiters: [] };
  ren.on((event) => {
    seen.raw.push(event);
    seen.rawWaiters = seen.rawWaiters.filter((w) => !w(event));
    if (event.src === ren.getClientId()) return; // skip own mutations (the seed's pattern)
    seen.others.push(event);
    seen.waiters = seen.waiters.filter((w) => !w(event));
  });
  return seen;
}

function waitFor(seen, pred, what, timeoutMs = 5000, list = 'others') {
  const already = seen[list].find(pred);
  if (already) return Promise.resolve(already);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), timeoutMs);
    seen[list === 'raw' ? 'rawWaiters' : 'waiters'].push((event) => {
      if (!pred(event)) return false;
      clearTimeout(timer);
      resolve(event);
      return true;
    });
  });
}

async function push(events, clientId) {
  const res = await renFetch(`${base}/api/ren/events`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(events),
  }, clientId);
  const body = await res.json();
  if (res.status !== 200 || body.ok !== true) fail(`ingest answered ${res.status} ${JSON.stringify(body)}`);
  return body.accepted;
}

async function main() {
  const a = client('tab-a', ['kv', 'realtime']);
  const b = client('tab-b', ['*']);

  // The streams open asynchronously; a probe every 100 ms until both have seen one
  // (at most 40).
  let opened = false;
  for (let i = 0; i < 40 && !opened; i++) {
    await push({ t: 'kv.put', k: `probe:${i}` }, 'probe');
    try {
      await Promise.all([
        waitFor(a, (e) => e.k?.startsWith('probe:'), 'probe on a', 100),
        waitFor(b, (e) => e.k?.startsWith('probe:'), 'probe on b', 100),
      ]);
      opened = true;
    } catch {}
  }
  if (!opened) fail('the RenClients never received a probe event');

  // tab-a writes: b gets it with src tab-a; a drops its own.
  if (await push({ t: 'kv.put', k: 'todo:1', data: { text: 'milk' } }, 'tab-a') !== 1) fail('accepted');
  const fromA = await waitFor(b, (e) => e.k === 'todo:1', 'todo:1 on b');
  if (fromA.src !== 'tab-a' || fromA.r !== 'kv' || fromA.data?.text !== 'milk') {
    fail(`todo:1 on b: ${JSON.stringify(fromA)}`);
  }
  // tab-b writes a batch: a gets the kv event, not the db one (its filter).
  await push([{ t: 'db.document.created', k: 'doc:1' }, { t: 'kv.put', k: 'todo:2' }], 'tab-b');
  const fromB = await waitFor(a, (e) => e.k === 'todo:2', 'todo:2 on a');
  if (fromB.src !== 'tab-b' || fromB.t !== 'kv.put') fail(`todo:2 on a: ${JSON.stringify(fromB)}`);
  await waitFor(b, (e) => e.k === 'todo:2', 'todo:2 on b', 5000, 'raw');
  const own = b.raw.find((e) => e.k === 'doc:1');
  if (!own || own.src !== 'tab-b') fail(`b was not sent its own doc:1: ${JSON.stringify(b.raw)}`);

  // A channel publish over the HTTP API is mirrored as realtime.message.
  const channel = `sdk-ren:${process.pid}`;
  const res = await fetch(`${base}/api/realtime/publish`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ channel, data: { n: 7 }, userId: 'alice' }),
  });
  if (res.status !== 200) fail(`publish answered ${res.status}`);
  const mirrored = await waitFor(a, (e) => e.t === 'realtime.message' && e.ch === channel, 'realtime.message on a');
  if (mirrored.r !== 'realtime' || mirrored.uid !== 'alice' || mirrored.data?.n !== 7) {
    fail(`mirrored message: ${JSON.stringify(mirrored)}`);
  }
  if ('src' in mirrored) fail(`a publish without X-Ren-Client named a src: ${JSON.stringify(mirrored)}`);
  // The same publish through renFetch as tab-b: mirrored with src tab-b, so a sees it
  // as someone else's write and b drops its own.
  const res2 = await renFetch(`${base}/api/realtime/publish`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ channel, data: { n: 8 } }),
  }, 'tab-b');
  if (res2.status !== 200) fail(`renFetch publish answered ${res2.status}`);
  const fromBPublish = await waitFor(a, (e) => e.t === 'realtime.message' && e.data?.n === 8, 'n:8 on a');
  if (fromBPublish.src !== 'tab-b') fail(`mirrored renFetch publish: ${JSON.stringify(fromBPublish)}`);
  await waitFor(b, (e) => e.t === 'realtime.message' && e.data?.n === 8, 'n:8 on b', 5000, 'raw');

  // A publish over the SDK's RealtimeClient as tab-a (its WebSocket sends `cid=tab-a`):
  // mirrored with src tab-a, so b sees it and a drops its own.
  const wsEndpoint = `${base.replace(/^http/, 'ws')}/_rt/ws`;
  const rt = new RealtimeClient({ wsEndpoint, autoReconnect: false, clientId: 'tab-a' });
  const rtConnected = new Promise((resolve) => rt.onAny((e) => { if (e?.event === 'connected') resolve(e); }));
  rt.connect();
  await rtConnected;
  rt.publish(channel, { n: 9 });
  const fromRt = await waitFor(b, (e) => e.t === 'realtime.message' && e.data?.n === 9, 'n:9 on b');
  if (fromRt.src !== 'tab-a') fail(`mirrored RealtimeClient publish: ${JSON.stringify(fromRt)}`);
  await waitFor(a, (e) => e.t === 'realtime.message' && e.data?.n === 9, 'n:9 on a', 5000, 'raw');
  if (a.others.some((e) => e.data?.n === 9)) fail('a did not drop its own RealtimeClient publish');
  rt.disconnect();

  if (!a.raw.some((e) => e.k === 'todo:1' && e.src === 'tab-a')) fail('a was not sent its own write');
  if (a.others.some((e) => e.k === 'todo:1')) fail('a did not drop its own write');
  if (a.raw.some((e) => e.r === 'db')) fail(`a got a db event: ${JSON.stringify(a.raw)}`);
  if (b.others.some((e) => e.src === 'tab-b')) fail('b did not drop its own write');

  a.ren.close();
  b.ren.close();
  clearTimeout(overall);
  console.log('sdk_ren: ok');
  process.exit(0);
}

main().catch((e) => fail(e && e.stack ? e.stack : String(e)));
