// Runs the official SDK (@maravilla-labs/platform RealtimeClient) against a running
// ringcast server: one client subscribes, another publishes, the subscriber must receive
// the message with the channel, data and userId intact.
//
// Usage: node tests/sdk/sdk_pubsub.mjs ws://127.0.0.1:PORT/_rt/ws
// Exit 0 on success; non-zero with a message on stderr otherwise.

import { WebSocket } from 'ws';
import { RealtimeClient } from '@maravilla-labs/platform';

// Node 20 has no global WebSocket; the SDK uses the global one.
globalThis.WebSocket = WebSocket;

const OVERALL_TIMEOUT_MS = 15000;
const endpoint = process.argv[2];
if (!endpoint) {
  console.error('usage: node sdk_pubsub.mjs ws://HOST:PORT/_rt/ws');
  process.exit(2);
}

const overall = setTimeout(() => {
  console.error(`sdk_pubsub: timed out after ${OVERALL_TIMEOUT_MS} ms`);
  process.exit(3);
}, OVERALL_TIMEOUT_MS);

function fail(message) {
  console.error(`sdk_pubsub: FAIL: ${message}`);
  process.exit(1);
}

function waitFor(client, pred, what, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out waiting for ${what}`));
    }, timeoutMs);
    const off = client.onAny((event) => {
      if (event && event.event === 'error') {
        clearTimeout(timer);
        off();
        reject(new Error(`server error while waiting for ${what}: ${JSON.stringify(event)}`));
        return;
      }
      if (pred(event)) {
        clearTimeout(timer);
        off();
        resolve(event);
      }
    });
  });
}

async function main() {
  const channel = `sdk:room-${process.pid}`;
  const payload = { text: 'hello from the SDK', n: 42, nested: { list: [1, 'two', null, true] } };

  const subscriber = new RealtimeClient({ wsEndpoint: endpoint, autoReconnect: false, clientId: 'sdk-sub' });
  const publisher = new RealtimeClient({ wsEndpoint: endpoint, autoReconnect: false, clientId: 'sdk-pub' });

  // Listeners before connecting, so no event can slip past.
  const subConnected = waitFor(subscriber, (e) => e.event === 'connected', 'subscriber connected');
  const subscribed = waitFor(subscriber, (e) => e.event === 'subscribed' && e.channel === channel, 'subscribed');
  const delivered = new Promise((resolve) => {
    // The SDK queues this subscribe frame until the socket opens.
    subscriber.subscribe(channel, (event) => {
      if (event.event === 'realtime.message') resolve(event);
    });
  });
  subscriber.connect();

  const connected = await subConnected;
  if (connected.data?.clientId !== 'sdk-sub') {
    fail(`connected.data.clientId: expected "sdk-sub", got ${JSON.stringify(connected)}`);
  }
  const sub = await subscribed;
  if (typeof sub.seq !== 'number') fail(`subscribed without numeric seq: ${JSON.stringify(sub)}`);

  const pubConnected = waitFor(publisher, (e) => e.event === 'connected', 'publisher connected');
  publisher.connect();
  await pubConnected;
  publisher.publish(channel, payload, { userId: 'alice' });

  const event = await Promise.race([
    delivered,
    new Promise((_, reject) => setTimeout(() => reject(new Error('no delivery within 5 s')), 5000)),
  ]);

  if (event.event !== 'realtime.message') fail(`event: ${JSON.stringify(event)}`);
  if (event.channel !== channel) fail(`channel: expected ${channel}, got ${JSON.stringify(event)}`);
  if (JSON.stringify(event.data) !== JSON.stringify(payload)) {
    fail(`data: expected ${JSON.stringify(payload)}, got ${JSON.stringify(event.data)}`);
  }
  if (event.userId !== 'alice') fail(`userId: expected "alice", got ${JSON.stringify(event)}`);
  if (event.seq !== sub.seq + 1) fail(`seq: expected ${sub.seq + 1}, got ${JSON.stringify(event)}`);
  if (typeof event.ts !== 'number') fail(`ts not numeric: ${JSON.stringify(event)}`);

  subscriber.disconnect();
  publisher.disconnect();
  clearTimeout(overall);
  console.log('sdk_pubsub: ok');
  process.exit(0);
}

main().catch((e) => fail(e && e.stack ? e.stack : String(e)));
