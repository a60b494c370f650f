// The Ringcast demo page: a chat room built on the official SDK (@maravilla-labs/platform),
// loaded from /demo/platform.js (bundled by scripts/build-demo.sh).
//
//   RealtimeClient  publish / subscribe on `demo:<room>`; catch-up after a reload with the
//                   subscribe option `lastEventId` (last seq kept in localStorage)
//   presence(ch)    join as this tab's user; onJoin / onLeave keep the online list
//   RenClient       the tenant's REN stream (SSE), shown in the side panel: one stream per
//                   browser, held by one of its tabs and relayed to the others
//                   (BroadcastChannel), see "the REN stream" below
//
// Each tab is its own user (name in sessionStorage, so it survives a reload); the
// messages a browser has seen and the last seq are shared by its tabs (localStorage).
//
// The page also works in an insecure context (http://<LAN address>:PORT/): it uses no API
// that browsers give secure contexts only (crypto.randomUUID, navigator.locks,
// navigator.clipboard, …).

import { RealtimeClient, RenClient } from '/demo/platform.js';

const params = new URLSearchParams(location.search);
const room = /^[A-Za-z0-9_-]{1,64}$/.test(params.get('room') || '') ? params.get('room') : 'lobby';
const CHANNEL = `demo:${room}`;
const WS_ENDPOINT = `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}/_rt/ws`;
const REN_ENDPOINT = `${location.origin}/api/maravilla/ren`;
const KEPT_MESSAGES = 200;
const SHOWN_REN_EVENTS = 40;

const $ = (id) => document.getElementById(id);
const ui = {
  status: $('status'), me: $('me'), room: $('room'), channel: $('channel'), notice: $('notice'),
  messages: $('messages'), empty: $('empty'), composer: $('composer'), text: $('text'),
  online: $('online'), onlineCount: $('online-count'), ren: $('ren'), renCount: $('ren-count'),
};

// ── who this tab is ─────────────────────────────────────────────────────────────────
const ADJECTIVES = ['Quiet', 'Brave', 'Sunny', 'Clever', 'Gentle', 'Swift', 'Lucky', 'Merry', 'Calm', 'Bold'];
const ANIMALS = ['Otter', 'Fox', 'Heron', 'Lynx', 'Panda', 'Robin', 'Badger', 'Koala', 'Owl', 'Seal'];
const COLORS = ['#e4572e', '#17bebb', '#7a5cfa', '#f2a541', '#2e86de', '#29a35a', '#d94f8a', '#8a6d3b'];
const pick = (list) => list[Math.floor(Math.random() * list.length)];

/**
 * A random UUID (version 4). Found in review: crypto.randomUUID() exists in secure
 * contexts only (HTTPS, localhost); on http://<LAN address>:PORT/ it threw and the page
 * stayed "connecting…". crypto.getRandomValues() is there in any context.
 */
function randomUuid() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40; // version 4
  b[8] = (b[8] & 0x3f) | 0x80; // variant 10
  const hex = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function whoAmI() {
  const saved = sessionStorage.getItem('ringcast-demo:me');
  if (saved) {
    try { return JSON.parse(saved); } catch { /* made anew below */ }
  }
  const me = {
    id: `u-${randomUuid().slice(0, 8)}`,
    name: `${pick(ADJECTIVES)} ${pick(ANIMALS)}`,
    color: pick(COLORS),
  };
  sessionStorage.setItem('ringcast-demo:me', JSON.stringify(me));
  return me;
}
const me = whoAmI();

// ── what this browser has seen of the room ──────────────────────────────────────────
const STORE_KEY = `ringcast-demo:${CHANNEL}`;
function loadStore() {
  try {
    const s = JSON.parse(localStorage.getItem(STORE_KEY) || 'null');
    if (s && Number.isInteger(s.lastSeq) && Array.isArray(s.messages)) return s;
  } catch { /* start afresh */ }
  return { lastSeq: 0, epoch: null, messages: [] };
}
const store = loadStore();
const bySeq = new Map(); // seq → message shown
function saveStore() {
  const kept = [...bySeq.values()].sort((a, b) => a.seq - b.seq).slice(-KEPT_MESSAGES);
  store.messages = kept;
  // Tabs of one browser share this; the last to save wins (live tabs see the same).
  localStorage.setItem(STORE_KEY, JSON.stringify(store));
}

// ── rendering ───────────────────────────────────────────────────────────────────────
const members = new Map(); // userId → metadata
const names = new Map(); // userId → the last name seen for it (kept after a leave)
const time = (ts) => new Date(ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
function nameOf(userId, data) {
  if (typeof data?.name === 'string') names.set(userId, data.name);
  return names.get(userId) || userId || 'someone';
}

function showMessage(msg) {
  if (!Number.isInteger(msg.seq) || bySeq.has(msg.seq)) return false;
  bySeq.set(msg.seq, msg);
  const li = document.createElement('li');
  li.className = msg.userId === me.id ? 'message mine' : 'message';
  li.dataset.seq = String(msg.seq);
  const meta = document.createElement('div');
  meta.className = 'meta';
  const who = document.createElement('span');
  who.className = 'who';
  who.textContent = nameOf(msg.userId, msg.data);
  who.style.color = msg.data?.color || 'inherit';
  const when = document.createElement('span');
  when.className = 'when';
  when.textContent = `${time(msg.ts)} · #${msg.seq}`;
  meta.append(who, when);
  const text = document.createElement('div');
  text.className = 'text';
  text.textContent = typeof msg.data?.text === 'string' ? msg.data.text : JSON.stringify(msg.data);
  li.append(meta, text);
  // In seq order, wherever it arrives from (cache, replay, live, history fetch).
  const after = [...ui.messages.children].find((el) => Number(el.dataset.seq) > msg.seq);
  ui.messages.insertBefore(li, after || null);
  ui.empty.hidden = true;
  if (msg.seq > store.lastSeq) store.lastSeq = msg.seq;
  ui.messages.scrollTop = ui.messages.scrollHeight;
  return true;
}

function clearMessages() {
  bySeq.clear();
  ui.messages.replaceChildren();
  ui.empty.hidden = false;
  store.lastSeq = 0;
}

function notice(text) {
  ui.notice.textContent = text;
  ui.notice.hidden = !text;
}

function setStatus(state, label) {
  ui.status.dataset.state = state;
  ui.status.textContent = label;
}

function renderOnline() {
  const list = [...members.entries()].sort((a, b) => (a[1]?.name || a[0]).localeCompare(b[1]?.name || b[0]));
  ui.online.replaceChildren(...list.map(([userId, meta]) => {
    const li = document.createElement('li');
    li.dataset.userId = userId;
    const dot = document.createElement('span');
    dot.className = 'dot';
    dot.style.background = meta?.color || '#999';
    const name = document.createElement('span');
    name.textContent = meta?.name || userId;
    li.append(dot, name);
    if (userId === me.id) {
      const you = document.createElement('span');
      you.className = 'you';
      you.textContent = 'you';
      li.append(you);
    }
    return li;
  }));
  ui.onlineCount.textContent = String(members.size);
}

let renCount = 0;
function showRenEvent(evt) {
  renCount += 1;
  ui.renCount.textContent = String(renCount);
  const li = document.createElement('li');
  li.dataset.type = evt.t;
  const type = document.createElement('code');
  type.textContent = evt.t;
  const what = document.createElement('span');
  what.className = 'what';
  const parts = [];
  if (evt.ch) parts.push(evt.ch);
  // A message's data and a joining member's metadata both carry the sender's name.
  if (evt.uid) parts.push(nameOf(evt.uid, evt.data));
  if (evt.t === 'realtime.message' && evt.v) parts.push(`seq ${evt.v}`);
  what.textContent = parts.join(' · ');
  const when = document.createElement('span');
  when.className = 'when';
  when.textContent = evt.ts ? time(evt.ts) : '';
  li.append(type, when, what);
  ui.ren.prepend(li);
  while (ui.ren.children.length > SHOWN_REN_EVENTS) ui.ren.lastChild.remove();
}

// ── HTTP API (createRemoteClient's routes; anonymous in --dev) ───────────────────────
async function getJson(path) {
  const res = await fetch(path, { headers: { Accept: 'application/json' } });
  if (!res.ok) throw new Error(`${path}: ${res.status}`);
  return res.json();
}
const historyUrl = (query) => `/api/realtime/history/${encodeURIComponent(CHANNEL)}?${query}`;

async function fetchHistory(query) {
  const { messages } = await getJson(historyUrl(query));
  let added = 0;
  for (const m of messages) {
    if (showMessage({ seq: m.seq, ts: m.ts, userId: m.uid, data: m.data })) added += 1;
  }
  saveStore();
  return added;
}

// The channel's members as the server has them now: replaces the list (after a
// reconnect, leaves and joins may have been missed while the socket was down).
async function fetchMembers() {
  const { members: list } = await getJson(`/api/realtime/presence/${encodeURIComponent(CHANNEL)}`);
  members.clear();
  for (const m of list) {
    members.set(m.userId, m.metadata);
    nameOf(m.userId, m.metadata);
  }
  renderOnline();
}

// ── the realtime client ─────────────────────────────────────────────────────────────
ui.me.textContent = me.name;
ui.me.dataset.userId = me.id;
ui.me.style.borderColor = me.color;
ui.room.textContent = `#${room}`;
ui.channel.textContent = CHANNEL;
document.title = `Ringcast demo · #${room}`;

for (const m of store.messages) showMessage(m);

const client = new RealtimeClient({ wsEndpoint: WS_ENDPOINT, clientId: me.id });
const presence = client.presence(CHANNEL);
function upsertMember(m) {
  members.set(m.userId, m.metadata);
  nameOf(m.userId, m.metadata);
  renderOnline();
}
presence.onJoin(upsertMember);
presence.onUpdate(upsertMember);
presence.onLeave((m) => { members.delete(m.userId); renderOnline(); });

let subscribedOnce = false; // the first `subscribed` of this page
let subscribing = false;
let replayed = 0; // messages the server replayed before the first `subscribed`

function onChannelEvent(event) {
  if (event.event === 'realtime.message') {
    const fresh = showMessage({ seq: event.seq, ts: event.ts, userId: event.userId, data: event.data });
    if (fresh && !subscribedOnce) replayed += 1;
    saveStore();
  } else if (event.event === 'subscribed') {
    onSubscribed(event).catch((e) => console.warn('ringcast demo:', e));
  }
}

async function onSubscribed(event) {
  if (subscribedOnce) {
    // The SDK subscribes again after a reconnect, without lastEventId: fetch what was
    // published while the socket was down, and who is here now.
    if (store.epoch !== null && event.epoch && store.epoch !== event.epoch) {
      // Another history (the server lost its data): our seqs mean nothing in it.
      clearMessages();
      store.epoch = event.epoch;
      saveStore();
      await fetchHistory('limit=50');
      notice('The room’s history restarted while you were away; showing the latest messages.');
    } else {
      const added = await fetchHistory(`after=${store.lastSeq}&limit=1000`);
      if (added) notice(`Reconnected: caught up on ${added} message${added === 1 ? '' : 's'}.`);
    }
    await fetchMembers();
    return;
  }
  subscribedOnce = true;
  const hadSeen = store.lastSeq > 0;
  if (hadSeen && (event.recovered === false || (store.epoch !== null && store.epoch !== event.epoch))) {
    // The server no longer has what came after our seq (or has another history).
    clearMessages();
    await fetchHistory('limit=50');
    notice('The room’s history moved on while you were away; showing the latest messages.');
  } else if (replayed > 0) {
    notice(`Caught up on ${replayed} message${replayed === 1 ? '' : 's'} you missed (lastEventId ${store.lastSeq - replayed}).`);
  } else if (hadSeen) {
    notice('You are up to date.');
  }
  store.epoch = event.epoch ?? null;
  saveStore();
  await fetchMembers();
}

async function subscribeOnce() {
  if (subscribing) return;
  subscribing = true;
  if (store.lastSeq === 0) {
    // A first visit: the latest messages, then everything after them.
    try { await fetchHistory('limit=50'); } catch (e) { console.warn('ringcast demo:', e); }
  }
  // Subscribed only once the socket is open, so the SDK sends lastEventId with it (frames
  // it queues before the socket opens are preceded by a plain subscribe of its own).
  client.subscribe(CHANNEL, onChannelEvent, store.lastSeq > 0 ? { lastEventId: store.lastSeq } : undefined);
  presence.join(me.id, { name: me.name, color: me.color });
}

client.onAny((event) => {
  if (event.event === 'connected') {
    setStatus('live', 'live');
    subscribeOnce().catch((e) => console.warn('ringcast demo:', e));
  } else if (event.event === 'error') {
    console.warn('ringcast demo: server error', event);
  }
});
client.connect();

// The SDK has no close callback; its socket state is read twice a second.
let wasLive = false;
setInterval(() => {
  const live = client.isConnected();
  if (live) wasLive = true;
  else if (wasLive) setStatus('offline', 'reconnecting…');
}, 500);

ui.composer.addEventListener('submit', (e) => {
  e.preventDefault();
  const text = ui.text.value.trim();
  if (!text) return;
  client.publish(CHANNEL, { text, name: me.name, color: me.color }, { userId: me.id });
  ui.text.value = '';
  ui.text.focus();
});

// ── the REN stream: one per browser, shared by its tabs ─────────────────────────────
// Found in review: every tab opened its own RenClient (an EventSource) at load. Over
// HTTP/1.1, which ringcast serves, Chromium allows 6 connections per host for all the tabs
// of a profile, and an SSE stream holds one for as long as it is open: a 6th tab's fetches
// hung (no history, an empty online list) and a 7th tab did not load at all. WebSockets do
// not count toward that limit, so each tab keeps its own RealtimeClient; the REN stream is
// held by one tab, the leader, which relays its events to the others over a
// BroadcastChannel.
//
// The election is BroadcastChannel messages and timers. navigator.locks would need fewer,
// but browsers give it to secure contexts only, and the page is also opened as
// http://<LAN address>:PORT/.
// - The leader says `beat` (its claim and its stream's state) every BEAT_MS, at once when
//   its stream's state changes and when a new tab asks `who`; on pagehide it says `bye`.
// - A tab whose `who` goes unanswered, or that hears the leader's `bye`, or no beat for
//   LEADER_GONE_MS, claims the stream after a random delay unless a leader spoke meanwhile.
// - Two leaders (claims that crossed; the late beat of a tab the browser throttles in the
//   background) settle on the newer claim: the other closes its stream when it hears it.
// Without BroadcastChannel each tab holds a stream of its own, as every tab once did.
const REN_BUS = 'ringcast-demo:ren';
const BEAT_MS = 1000;
const LEADER_GONE_MS = 5000;
const WHO_WAIT_MS = 100;
const CLAIM_JITTER_MS = 250;

/**
 * The SDK's RenClient reconnects from a timer after an error, and its `close()` leaves that
 * timer running (the `connect()` it calls opens a new EventSource and clears `closed`): a
 * tab that hands the stream over during a back-off would open it again, holding a
 * connection for good. This one stays closed.
 */
class RenStream extends RenClient {
  connect() {
    if (this.shut) return;
    super.connect();
    // The RenClient tells no open/close; its EventSource (`es`, replaced on each
    // reconnect) does.
    this.es.addEventListener('open', showRenState);
    this.es.addEventListener('error', showRenState);
  }

  close() {
    this.shut = true;
    super.close();
  }
}

const tabId = randomUuid();
const bus = typeof BroadcastChannel === 'function' ? new BroadcastChannel(REN_BUS) : null;
const renState = $('ren-state');
let ren = null; // this tab's stream, while it leads
let claim = null; // { at, id }: this tab's claim, while it leads
let leader = null; // { at, id, state }: the other tab that leads, as heard last
let heardAt = 0; // when that tab was heard last
let beatsHeard = 0;
let claimTimer = null;
let beatState = null; // the stream state the last beat told
let leaving = false; // set on pagehide: the bus is closed, and this tab claims nothing more

/** Says `m` to the other tabs; nothing once this tab is leaving (its bus is closed). */
function post(m) {
  if (!leaving) bus?.postMessage(m);
}

/** Claims are ordered by time, then tab id; the greater one keeps the stream. */
const newer = (a, b) => a.at > b.at || (a.at === b.at && a.id > b.id);
const leaderGone = () => Date.now() - heardAt > LEADER_GONE_MS;

function streamState() {
  return ren?.es?.readyState === 1 ? 'open' : 'connecting'; // EventSource.OPEN
}

function beat() {
  beatState = streamState();
  post({ t: 'beat', at: claim.at, id: claim.id, state: beatState });
}

function showRenState() {
  let state = 'connecting';
  if (ren) state = streamState();
  else if (leader && !leaderGone()) state = leader.state;
  if (ren && state !== beatState) beat();
  renState.dataset.state = state;
  // The tab that holds the stream, or one shown what another tab relays.
  renState.dataset.role = ren ? 'leader' : 'relay';
  renState.textContent = state === 'open' ? 'open' : 'connecting…';
  renState.title = ren
    ? 'This tab holds the REN stream and relays it to the other tabs of this browser.'
    : 'Relayed from another tab of this browser, which holds the REN stream.';
}

function lead() {
  if (leaving) return;
  claim = { at: Date.now(), id: tabId };
  leader = null;
  beat();
  ren = new RenStream({ endpoint: REN_ENDPOINT, subscriptions: ['realtime', 'presence'], clientId: me.id });
  ren.on((evt) => {
    showRenEvent(evt);
    post({ t: 'event', from: tabId, evt });
  });
  showRenState();
}

function stepDown() {
  ren.close();
  ren = null;
  claim = null;
}

function scheduleClaim(wait) {
  if (ren || leaving || claimTimer !== null) return;
  const heard = beatsHeard;
  claimTimer = setTimeout(() => {
    claimTimer = null;
    if (!ren && beatsHeard === heard) lead();
  }, wait + Math.random() * CLAIM_JITTER_MS);
}

function onBeat(m) {
  if (ren) {
    if (!newer(m, claim)) {
      beat(); // ours stands: the other tab closes its stream when it hears this
      return;
    }
    stepDown();
  } else if (leader && leader.id !== m.id && newer(leader, m) && !leaderGone()) {
    return; // an older leader, about to hear the newer one and stop
  }
  leader = { at: m.at, id: m.id, state: m.state };
  heardAt = Date.now();
  beatsHeard += 1;
  showRenState();
}

if (bus) {
  bus.onmessage = ({ data: m }) => {
    if (m.t === 'beat') onBeat(m);
    else if (m.t === 'who' && ren) beat();
    else if (m.t === 'event' && !ren && m.from === leader?.id) showRenEvent(m.evt);
    else if (m.t === 'bye' && m.id === leader?.id) {
      leader = null;
      heardAt = 0;
      showRenState();
      scheduleClaim(0);
    }
  };
  post({ t: 'who' });
  scheduleClaim(WHO_WAIT_MS);
  let tickAt = Date.now();
  setInterval(() => {
    const now = Date.now();
    // A tick that came late (the browser throttles a background tab's timers, to once a
    // minute after a while) says nothing of the leader, whose beats are likely throttled
    // the same way: two such tabs would take the stream from each other every minute. A
    // tab coming back into view checks at once (visibilitychange below).
    const onTime = now - tickAt < 3 * BEAT_MS;
    tickAt = now;
    if (ren) beat();
    else if (onTime && leaderGone()) scheduleClaim(0);
  }, BEAT_MS);
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState !== 'visible') return;
    tickAt = Date.now();
    if (!ren && leaderGone()) scheduleClaim(0);
  });
} else {
  lead();
}
setInterval(showRenState, 500);

// Leaving (closing the tab, a reload, navigating away): leave presence at once rather than
// after the server's presence TTL, and hand the REN stream to another tab. A claim timer
// set by another tab's `bye` just before may still fire: `leaving` keeps it from leading
// (found in CI: such a tab posted its beat on the closed bus, an InvalidStateError).
addEventListener('pagehide', () => {
  client.disconnect();
  if (ren) {
    stepDown();
    post({ t: 'bye', id: tabId });
  }
  leaving = true;
  if (claimTimer !== null) clearTimeout(claimTimer);
  claimTimer = null;
  bus?.close();
});
// A page restored from the back/forward cache has closed its connections: start afresh.
addEventListener('pageshow', (e) => {
  if (e.persisted) location.reload();
});
