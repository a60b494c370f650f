// Runs the official SDK's server client (getPlatform() → createRemoteClient) against a
// running ringcast server: HTTP publishes reach a RealtimeClient subscriber, history
// reads page by `limit` (latest N) and by `after` (the next N), channels() lists the
// subscribed channel, and presence.join / members / leave (plus an update, which the
// SDK's remote client does not offer, sent as the same kind of fetch) drive presence
// that the subscriber's presence(ch) handle sees: onJoin, onUpdate, onLeave.
//
// Usage: node tests/sdk/sdk_remote.mjs http://127.0.0.1:PORT ws://127.0.0.1:PORT/_rt/ws
// Exit 0 on success; non-zero with a message on stderr otherwise.

import { WebSocket } from 'ws';
import { RealtimeClient, getPlatform } from '@maravilla-labs/platform';

globalThis.WebSocket = WebSocket;

const OVERALL_TIMEOUT_MS = 15000;
const [baseUrl, wsEndpoint] = process.argv.slice(2);
if (!baseUrl || !wsEndpoint) {
  console.error('usage: node sdk_remote.mjs http://HOST:PORT ws://HOST:PORT/_rt/ws');
  process.exit(2);
}
const overall = setTimeout(() => {
  console.error(`sdk_remote: timed out after ${OVERALL_TIMEOUT_MS} ms`);
  process.exit(3);
}, OVERALL_TIMEOUT_MS);

function fail(message) {
  console.error(`sdk_remote: FAIL: ${message}`);
  process.exit(1);
}

function check(cond, what, got) {
  if (!cond) fail(`${what}: got ${JSON.stringify(got)}`);
}

async function main() {
  // No tenant: the SDK then sends `X-Tenant-Id: dev-tenant-001`, which `--dev` takes as
  // its `dev` tenant, the one `RealtimeClient` (no tenant) lands in.
  const platform = getPlatform({ devServerUrl: baseUrl });
  const channel = `sdk:remote-${process.pid}`;

  const subscriber = new RealtimeClient({ wsEndpoint, autoReconnect: false, clientId: 'sdk-remote-sub' });
  const received = [];
  let wake = null;
  const subscribed = new Promise((resolve) => {
    subscriber.onAny((e) => {
      if (e.event === 'subscribed' && e.channel === channel) resolve(e);
    });
  });
  subscriber.subscribe(channel, (event) => {
    if (event.event === 'realtime.message') {
      received.push(event);
      if (wake) wake();
    }
  });
  subscriber.connect();
  await subscribed;

  check(JSON.stringify(await platform.realtime.channels()) === JSON.stringify([channel]),
    'channels() lists the subscribed channel', await platform.realtime.channels());

  const payloads = [1, 2, 3, 4, 5].map((n) => ({ n, text: `message ${n}`, nested: [n, null, true] }));
  for (const data of payloads) {
    await platform.realtime.publish(channel, data, { userId: 'backend' });
  }
  const deadline = Date.now() + 5000;
  while (received.length < payloads.length && Date.now() < deadline) {
    await new Promise((resolve) => { wake = resolve; setTimeout(resolve, 100); });
  }
  check(received.length === payloads.length, 'deliveries to the RealtimeClient', received);
  received.forEach((event, i) => {
    check(event.channel === channel && event.userId === 'backend', `delivery ${i}`, event);
    check(JSON.stringify(event.data) === JSON.stringify(payloads[i]), `delivery ${i} data`, event);
    check(event.seq === i + 1, `delivery ${i} seq`, event);
  });

  const latest = await platform.realtime.history(channel, { limit: 2 });
  check(JSON.stringify(latest.map((m) => m.seq)) === '[4,5]', 'history latest 2', latest);
  check(JSON.stringify(latest[1].data) === JSON.stringify(payloads[4]), 'history data', latest);
  check(latest[1].uid === 'backend' && latest[1].channel === channel && typeof latest[1].ts === 'number',
    'history message shape', latest[1]);
  const next = await platform.realtime.history(channel, { after: 1, limit: 2 });
  check(JSON.stringify(next.map((m) => m.seq)) === '[2,3]', 'history after 1, limit 2', next);
  const all = await platform.realtime.history(channel);
  check(all.length === 5 && all[0].seq === 1, 'history, no options', all);
  const none = await platform.realtime.history(`${channel}:never`);
  check(Array.isArray(none) && none.length === 0, 'history of an unknown channel', none);

  // Presence through the remote client; the subscriber's handle watches the channel.
  const seen = [];
  let presenceWake = null;
  const handle = subscriber.presence(channel);
  const record = (kind) => (member) => {
    seen.push([kind, member]);
    if (presenceWake) presenceWake();
  };
  handle.onJoin(record('join'));
  handle.onUpdate(record('update'));
  handle.onLeave(record('leave'));
  const presenceSeen = async (count, what) => {
    const until = Date.now() + 5000;
    while (seen.length < count && Date.now() < until) {
      await new Promise((resolve) => { presenceWake = resolve; setTimeout(resolve, 100); });
    }
    check(seen.length === count, what, seen);
    return seen[count - 1];
  };
  const presence = platform.realtime.presence;
  const meta = { name: 'Server Alice', n: 1 };
  check(await presence.join(channel, 'server-alice', meta) === true, 'presence.join is new', null);
  const [joinKind, joined] = await presenceSeen(1, 'onJoin after presence.join');
  check(joinKind === 'join' && joined.userId === 'server-alice', 'onJoin member', joined);
  check(JSON.stringify(joined.metadata) === JSON.stringify(meta), 'onJoin metadata', joined);
  check(await presence.join(channel, 'server-alice', meta) === false, 'a second join is not new', null);
  const members = await presence.members(channel);
  check(members.length === 1 && members[0].userId === 'server-alice', 'presence.members', members);
  check(JSON.stringify(members[0].metadata) === JSON.stringify(meta), 'members metadata', members);
  const nowSecs = Math.floor(Date.now() / 1000);
  check(Math.abs(members[0].lastSeen - nowSecs) <= 5, 'members lastSeen in epoch seconds', members);

  // The remote client has no update(); the route is the one SPEC §5 names.
  check(typeof presence.update === 'undefined', 'the SDK remote client has no presence.update', Object.keys(presence));
  const res = await fetch(`${baseUrl}/api/realtime/presence/${encodeURIComponent(channel)}/update`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-Tenant-Id': 'dev' },
    body: JSON.stringify({ userId: 'server-alice', metadata: { name: 'Server Alice', n: 2 } }),
  });
  const updated = await res.json();
  check(res.status === 200 && updated.updated === true, 'presence update', updated);
  const [updateKind, update] = await presenceSeen(2, 'onUpdate after the update');
  check(updateKind === 'update' && update.metadata?.n === 2, 'onUpdate member', update);

  check(await presence.leave(channel, 'server-alice') === true, 'presence.leave was present', null);
  const [leaveKind, left] = await presenceSeen(3, 'onLeave after presence.leave');
  check(leaveKind === 'leave' && left.userId === 'server-alice', 'onLeave member', left);
  check(await presence.leave(channel, 'server-alice') === false, 'a second leave was not present', null);
  const after = await presence.members(channel);
  check(Array.isArray(after) && after.length === 0, 'members after the leave', after);

  subscriber.disconnect();
  clearTimeout(overall);
  console.log('sdk_remote: ok');
  process.exit(0);
}

main().catch((e) => fail(e && e.stack ? e.stack : String(e)));
