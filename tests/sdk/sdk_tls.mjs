// Runs the official SDK through a TLS terminator (nginx, HAProxy or Caddy, started by
// tests/tests/tls_proxies.rs) in front of ringcast: RealtimeClient pub/sub over wss://,
// getPlatform() → createRemoteClient publish and history over https://, a RenClient
// (SSE over https://) receiving the mirrored publish; then that the client address the
// proxy forwards reaches ringcast: ringcast runs with max_connections_per_ip = 1 and the
// clients connect to the proxy from different loopback addresses, so a second WebSocket
// from the subscriber's address is refused (429) while one from a fresh address opens.
// Were ringcast to see the proxy's own address, the publisher's socket would already be
// the second from it.
//
// The certificate is self-signed: the test passes it in NODE_EXTRA_CA_CERTS.
//
// Usage: node tests/sdk/sdk_tls.mjs https://127.0.0.1:PORT wss://127.0.0.1:PORT/_rt/ws
// Exit 0 on success; non-zero with a message on stderr otherwise.

import { WebSocket } from 'ws';
import { EventSource } from 'eventsource';
import { RealtimeClient, RenClient, getPlatform } from '@maravilla-labs/platform';

const OVERALL_TIMEOUT_MS = 20000;
const [httpsBase, wssEndpoint] = process.argv.slice(2);
if (!httpsBase || !wssEndpoint) {
  console.error('usage: node sdk_tls.mjs https://HOST:PORT wss://HOST:PORT/_rt/ws');
  process.exit(2);
}
setTimeout(() => {
  console.error(`sdk_tls: timed out after ${OVERALL_TIMEOUT_MS} ms`);
  process.exit(3);
}, OVERALL_TIMEOUT_MS).unref();

function fail(message) {
  console.error(`sdk_tls: FAIL: ${message}`);
  process.exit(1);
}

function check(cond, what, got) {
  if (!cond) fail(`${what}: got ${JSON.stringify(got)}`);
}

// Node 20 has neither global; the SDK uses the globals. The WebSocket one connects from
// a chosen loopback address, so the proxy sees clients at different addresses.
globalThis.EventSource = EventSource;
function webSocketFrom(localAddress) {
  return class extends WebSocket {
    constructor(url, protocols, options) {
      super(url, protocols, { ...options, localAddress });
    }
  };
}

function within(promise, ms, what) {
  return Promise.race([
    promise,
    new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms)),
  ]);
}

function nextEvent(client, pred, what) {
  return within(new Promise((resolve, reject) => {
    const off = client.onAny((event) => {
      if (event?.event === 'error') {
        off();
        reject(new Error(`server error while waiting for ${what}: ${JSON.stringify(event)}`));
      } else if (pred(event)) {
        off();
        resolve(event);
      }
    });
  }), 5000, what);
}

/** A RealtimeClient connected from `localAddress`. */
async function connectFrom(localAddress, clientId) {
  globalThis.WebSocket = webSocketFrom(localAddress);
  const client = new RealtimeClient({ wsEndpoint: wssEndpoint, autoReconnect: false, clientId });
  const connected = nextEvent(client, (e) => e.event === 'connected', `${clientId} connected`);
  client.connect();
  await connected;
  return client;
}

/** Opens one more WebSocket from `localAddress`: 'open' or the refusal's status. */
function tryWebSocket(localAddress) {
  return within(new Promise((resolve, reject) => {
    const ws = new WebSocket(`${wssEndpoint}?cid=probe`, { localAddress });
    ws.on('open', () => {
      ws.close();
      resolve('open');
    });
    ws.on('unexpected-response', (_req, res) => {
      res.resume();
      resolve(res.statusCode);
    });
    ws.on('error', (e) => reject(e));
  }), 5000, `a WebSocket from ${localAddress}`);
}

async function main() {
  const channel = `sdk:tls-${process.pid}`;

  // REN over https:// (SSE through the proxy), from 127.0.0.1.
  const ren = new RenClient({
    endpoint: `${httpsBase}/api/maravilla/ren`,
    subscriptions: ['realtime'],
    clientId: 'sdk-tls-ren',
    autoReconnect: false,
  });
  const renEvents = [];
  let renWake = () => {};
  ren.on((event) => {
    renEvents.push(event);
    renWake();
  });

  // Pub/sub over wss://: subscriber from 127.0.0.2, publisher from 127.0.0.3.
  const subscriber = await connectFrom('127.0.0.2', 'sdk-tls-sub');
  const subscribed = nextEvent(subscriber, (e) => e.event === 'subscribed' && e.channel === channel, 'subscribed');
  const delivered = [];
  let wake = () => {};
  subscriber.subscribe(channel, (event) => {
    if (event.event === 'realtime.message') {
      delivered.push(event);
      wake();
    }
  });
  await subscribed;
  const publisher = await connectFrom('127.0.0.3', 'sdk-tls-pub');
  publisher.publish(channel, { text: 'over wss', n: 1 }, { userId: 'alice' });

  const waitUntil = async (cond, what) => {
    const deadline = Date.now() + 5000;
    while (!cond() && Date.now() < deadline) {
      await new Promise((resolve) => {
        wake = resolve;
        renWake = resolve;
        setTimeout(resolve, 100);
      });
    }
    check(cond(), what, { delivered, renEvents });
  };
  await waitUntil(() => delivered.length >= 1, 'the wss:// publish reached the subscriber');
  check(delivered[0].data?.text === 'over wss' && delivered[0].userId === 'alice' && delivered[0].seq === 1,
    'the delivered message', delivered[0]);

  // createRemoteClient over https://: publish (fanned out to the wss:// subscriber, and
  // mirrored to the REN stream), then history.
  const platform = getPlatform({ devServerUrl: httpsBase, tenant: 'dev' });
  await platform.realtime.publish(channel, { text: 'over https', n: 2 }, { userId: 'backend' });
  await waitUntil(() => delivered.length >= 2, 'the https:// publish reached the wss:// subscriber');
  check(delivered[1].data?.n === 2 && delivered[1].seq === 2, 'the second delivery', delivered[1]);
  const history = await platform.realtime.history(channel);
  check(JSON.stringify(history.map((m) => m.seq)) === '[1,2]', 'history over https://', history);
  check(history[0].data?.text === 'over wss' && history[1].uid === 'backend', 'history messages', history);

  // The REN stream may have opened after those publishes: publish until it has one (at
  // most 40 times, 100 ms apart), then check the mirrored event.
  for (let i = 0; i < 40 && !renEvents.some((e) => e.ch === channel); i++) {
    await platform.realtime.publish(channel, { text: 'for ren', n: 100 + i }, { userId: 'backend' });
    await waitUntil(() => renEvents.some((e) => e.ch === channel) || delivered.length >= 3 + i, 'a delivery');
  }
  const mirrored = renEvents.find((e) => e.ch === channel);
  check(mirrored && mirrored.t === 'realtime.message' && mirrored.r === 'realtime' && typeof mirrored.data?.n === 'number',
    'the RenClient got the mirrored publish over https://', renEvents);

  // The client address: one connection per address is allowed.
  check(await tryWebSocket('127.0.0.2') === 429, 'a second WebSocket from the subscriber\'s address is refused', null);
  check(await tryWebSocket('127.0.0.4') === 'open', 'a WebSocket from a fresh address opens', null);

  subscriber.disconnect();
  publisher.disconnect();
  ren.close();
  console.log('sdk_tls: ok');
  process.exit(0);
}

main().catch((e) => fail(e && e.stack ? e.stack : String(e)));
