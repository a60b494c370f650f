// Runs the official SDK's presence handle (@maravilla-labs/platform RealtimeClient
// `presence(ch)`) against a running ringcast server: an observer subscribes to the
// channel and listens with onJoin/onUpdate/onLeave; another client joins, updates its
// metadata and leaves; the observer must see all three, in order, with userId and
// metadata intact.
//
// Usage: node tests/sdk/sdk_presence.mjs ws://127.0.0.1:PORT/_rt/ws
// Exit 0 on success; non-zero with a message on stderr otherwise.

import { WebSocket } from 'ws';
import { RealtimeClient } from '@maravilla-labs/platform';

globalThis.WebSocket = WebSocket;

const OVERALL_TIMEOUT_MS = 15000;
const endpoint = process.argv[2];
if (!endpoint) {
  console.error('usage: node sdk_presence.mjs ws://HOST:PORT/_rt/ws');
  process.exit(2);
}

setTimeout(() => {
  console.error(`sdk_presence: timed out after ${OVERALL_TIMEOUT_MS} ms`);
  process.exit(3);
}, OVERALL_TIMEOUT_MS).unref();

function fail(message) {
  console.error(`sdk_presence: FAIL: ${message}`);
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

/** The next `count` callbacks of the presence handle, as [kind, member] pairs. */
function collect(handle, count) {
  const seen = [];
  return new Promise((resolve) => {
    const push = (kind) => (member) => {
      seen.push([kind, member]);
      if (seen.length === count) resolve(seen);
    };
    handle.onJoin(push('join'));
    handle.onUpdate(push('update'));
    handle.onLeave(push('leave'));
  });
}

async function main() {
  const channel = `sdk:presence-${process.pid}`;
  const observer = new RealtimeClient({ wsEndpoint: endpoint, autoReconnect: false, clientId: 'sdk-observer' });
  const alice = new RealtimeClient({ wsEndpoint: endpoint, autoReconnect: false, clientId: 'sdk-alice' });

  const subscribed = waitFor(observer, (e) => e.event === 'subscribed' && e.channel === channel, 'subscribed');
  // Presence events go to the channel's subscribers: the observer subscribes.
  observer.subscribe(channel, () => {});
  const events = collect(observer.presence(channel), 3);
  observer.connect();
  await subscribed;

  const aliceConnected = waitFor(alice, (e) => e.event === 'connected', 'alice connected');
  alice.connect();
  await aliceConnected;
  const mine = alice.presence(channel);
  mine.join('alice', { name: 'Alice', status: 'online' });
  // The SDK sends frames in order on one socket; the server applies them in order.
  mine.update({ name: 'Alice', status: 'away' });
  mine.leave();

  const seen = await Promise.race([
    events,
    new Promise((_, reject) => setTimeout(() => reject(new Error('no join/update/leave within 5 s')), 5000)),
  ]);
  const kinds = seen.map(([kind]) => kind).join(',');
  if (kinds !== 'join,update,leave') fail(`callbacks: expected join,update,leave, got ${kinds}`);
  for (const [kind, member] of seen) {
    if (member.userId !== 'alice') fail(`${kind}: userId ${JSON.stringify(member)}`);
    if (typeof member.lastSeen !== 'number') fail(`${kind}: lastSeen ${JSON.stringify(member)}`);
  }
  if (JSON.stringify(seen[0][1].metadata) !== JSON.stringify({ name: 'Alice', status: 'online' })) {
    fail(`join metadata: ${JSON.stringify(seen[0][1])}`);
  }
  if (seen[1][1].metadata?.status !== 'away') fail(`update metadata: ${JSON.stringify(seen[1][1])}`);

  observer.disconnect();
  alice.disconnect();
  console.log('sdk_presence: ok');
  process.exit(0);
}

main().catch((e) => fail(e && e.stack ? e.stack : String(e)));
