// Bun.serve with ws.subscribe(channel) + server.publish(channel, frame): the uWebSockets
// core, speaking Ringcast's JSON actions.
// node_modules/.bin/bun server.mjs [PORT]  → prints "bun listening on 127.0.0.1:PORT"
const port = Number(process.argv[2] ?? process.env.PORT ?? 0);
const seqs = new Map();
let nextCid = 0;

const server = Bun.serve({
  hostname: '127.0.0.1',
  port,
  fetch(req, server) {
    if (server.upgrade(req)) return undefined;
    return new Response('websocket only', { status: 426 });
  },
  websocket: {
    perMessageDeflate: false,
    maxPayloadLength: 16 * 1024 * 1024,
    backpressureLimit: 4 * 1024 * 1024,
    open(ws) {
      ws.send(JSON.stringify({ event: 'connected', cid: `c${nextCid++}` }));
    },
    message(ws, raw) {
      if (typeof raw !== 'string') return;
      let m;
      try { m = JSON.parse(raw); } catch { return; }
      if (m.action === 'subscribe' && typeof m.channel === 'string') {
        ws.subscribe(m.channel);
        ws.send(JSON.stringify({ event: 'subscribed', channel: m.channel, seq: seqs.get(m.channel) ?? 0 }));
      } else if (m.action === 'publish' && typeof m.channel === 'string') {
        const seq = (seqs.get(m.channel) ?? 0) + 1;
        seqs.set(m.channel, seq);
        server.publish(m.channel, JSON.stringify({
          event: 'realtime.message', channel: m.channel, data: m.data, seq, ts: Date.now(),
        }));
      } else if (m.action === 'ping') {
        ws.send('{"event":"pong"}');
      }
    },
  },
});
console.log(`bun listening on 127.0.0.1:${server.port}`);
