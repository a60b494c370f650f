// Socket.IO rooms: event "subscribe" joins a room (answered with "subscribed"), event
// "publish" (channel, data) emits "message" to the room. WebSocket transport only.
// node server.mjs [PORT]  → prints "socketio listening on 127.0.0.1:PORT"
import { createServer } from 'node:http';
import { Server } from 'socket.io';

const port = Number(process.argv[2] ?? process.env.PORT ?? 0);
const http = createServer();
const io = new Server(http, {
  transports: ['websocket'],
  perMessageDeflate: false,
  httpCompression: false,
  maxHttpBufferSize: 16 * 1024 * 1024,
  pingInterval: 25000,
  pingTimeout: 60000,
});
io.on('connection', (socket) => {
  socket.on('subscribe', (channel) => {
    if (typeof channel !== 'string') return;
    socket.join(channel);
    socket.emit('subscribed', channel);
  });
  socket.on('publish', (channel, data) => {
    if (typeof channel !== 'string') return;
    io.to(channel).emit('message', data);
  });
});
http.listen({ host: '127.0.0.1', port, backlog: 4096 }, () => {
  console.log(`socketio listening on 127.0.0.1:${http.address().port}`);
});
