// Node.js + `ws`: the common hand-rolled broadcast server, speaking Ringcast's JSON actions.
// node server.mjs [PORT]  → prints "node-ws listening on 127.0.0.1:PORT"
import { WebSocketServer } from 'ws';

const port = Number(process.argv[2] ?? process.env.PORT ?? 0);
const channels = new Map(); // name -> { seq, subs: Set<WebSocket> }
let nextCid = 0;

const wss = new WebSocketServer({ host: '127.0.0.1', port, backlog: 4096, perMessageDeflate: false });
wss.on('listening', () => {
  console.log(`node-ws listening on 127.0.0.1:${wss.address().port}`);
});
wss.on('connection', (ws) => {
  const mine = new Set();
  ws.send(JSON.stringify({ event: 'connected', cid: `c${nextCid++}` }));
  ws.on('message', (raw, isBinary) => {
    if (isBinary) return;
    let m;
    try { m = JSON.parse(raw); } catch { return; }
    if (m.action === 'subscribe' && typeof m.channel === 'string') {
      let ch = channels.get(m.channel);
      if (!ch) channels.set(m.channel, (ch = { seq: 0, subs: new Set() }));
      ch.subs.add(ws);
      mine.add(m.channel);
      ws.send(JSON.stringify({ event: 'subscribed', channel: m.channel, seq: ch.seq }));
    } else if (m.action === 'publish' && typeof m.channel === 'string') {
      const ch = channels.get(m.channel);
      if (!ch) return;
      ch.seq += 1;
      // Encode once; the same Buffer goes to every subscriber.
      const frame = Buffer.from(JSON.stringify({
        event: 'realtime.message', channel: m.channel, data: m.data, seq: ch.seq, ts: Date.now(),
      }));
      for (const s of ch.subs) s.send(frame, { binary: false });
    } else if (m.action === 'ping') {
      ws.send('{"event":"pong"}');
    }
  });
  ws.on('close', () => {
    for (const name of mine) channels.get(name)?.subs.delete(ws);
  });
  ws.on('error', () => {});
});
