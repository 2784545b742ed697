// The comparison point for docs/benchmarks.md, not part of the chat.
//
// Node's socket.io with its Redis adapter, as its documentation sets it up,
// speaking just the part of the chat's protocol that chat-bench uses: auth
// {name, room}, a `welcome` event, `message` {text} acknowledged with
// {ok, id}, and the message relayed to the room as {id, room, name, text,
// server, ts}.  No history, presence or rate limit: this is the plain
// pub/sub fan-out the Python replicas are measured against.  `python -m
// chat.tools.sweep --topology node` runs three of these behind the same NGINX
// and Redis as the Python topologies (one Node process per replica, as one
// gunicorn worker per replica).

"use strict";

const crypto = require("node:crypto");
const http = require("node:http");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");
const { Server } = require("socket.io");

const port = Number(process.env.PORT || 8000);
const server = process.env.SERVER_ID || `node-${process.pid}`;
const redisUrl = process.env.REDIS_URL || "redis://127.0.0.1:6379/0";
let ready = false;

const httpServer = http.createServer((request, response) => {
  // socket.io answers its own path before this handler runs.
  if (request.url === "/healthz" || request.url === "/readyz") {
    const ok = request.url === "/healthz" || ready;
    response.writeHead(ok ? 200 : 503, { "content-type": "application/json" });
    response.end(JSON.stringify({ server, ready }));
    return;
  }
  response.writeHead(404);
  response.end();
});

const io = new Server(httpServer, { serveClient: false });

io.use((socket, next) => {
  const { name } = socket.handshake.auth || {};
  if (typeof name !== "string" || !name.trim()) {
    next(new Error("a name is required (auth.name, a string)"));
    return;
  }
  next();
});

io.on("connection", (socket) => {
  const name = socket.handshake.auth.name.trim();
  const room = typeof socket.handshake.auth.room === "string" ? socket.handshake.auth.room : "general";
  socket.join(room);
  socket.emit("welcome", { server, mode: "node", sid: socket.id, name, room });
  socket.on("message", (payload, ack) => {
    const answer = typeof ack === "function" ? ack : () => {};
    const text = payload && typeof payload.text === "string" ? payload.text.trim() : "";
    if (!text) {
      answer({ ok: false, error: "message text is empty" });
      return;
    }
    const id = crypto.randomUUID().replaceAll("-", "");
    io.to(room).emit("message", { id, room, name, text, server, ts: Date.now() });
    answer({ ok: true, id });
  });
});

async function main() {
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);
  io.adapter(createAdapter(pub, sub));
  ready = true;
  httpServer.listen(port, "127.0.0.1", () => console.log(`${server} listening on ${port}`));
}

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => process.exit(0));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
