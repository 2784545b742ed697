// The official socket.io-client (node_modules, the version package.json
// pins) driven by a test, one JSON object per line each way.
//
// Why a Node process: connection state recovery is the stock client's own
// mechanism (it keeps the server's `pid` and the last event's offset, sends
// them back in its next CONNECT and sets `socket.recovered`).  The Python
// client has none of it, so only the real client can say whether a
// replica's answer is one that client understands.
//
// Flow: the test writes commands on stdin; this script writes what happens
// on stdout, in the order the client's handlers saw it:
//   {"cmd": "connect", "url", "sticky", "auth", "transports", "pid"?, "offset"?}
//   {"cmd": "emit", "ref", "event", "args"}   -> {"type": "ack", "ref", "error", "args"}
//   {"cmd": "pause"}            reconnection off (the client stays away when cut)
//   {"cmd": "close-transport"}  engine.close(): no Socket.IO DISCONNECT is sent
//   {"cmd": "resume"}           reconnection on, and connect again now
//   {"cmd": "state"}            -> {"type": "state", "id", "pid", "offset", ...}
//   {"cmd": "disconnect"}       a clean Socket.IO disconnect
// Out, besides: {"type": "connect", "id", "recovered", "pid", "transport"},
// {"type": "event", "name", "args"} for every server event (all arguments,
// as the handler got them), {"type": "disconnect", "reason"},
// {"type": "connect_error", "message", "data"}, {"type": "error", "message"}.
"use strict";

const readline = require("readline");
const { io } = require("socket.io-client");

let socket = null;

function out(line) {
  process.stdout.write(JSON.stringify(line) + "\n");
}

function state() {
  return {
    id: socket ? socket.id || null : null,
    // The client's private fields: what it will send back in its next CONNECT.
    pid: socket ? socket._pid || null : null,
    offset: socket ? socket._lastOffset || null : null,
    connected: Boolean(socket && socket.connected),
    recovered: Boolean(socket && socket.recovered),
  };
}

function connect(cmd) {
  socket = io(cmd.url, {
    query: { sticky: cmd.sticky },
    auth: cmd.auth,
    transports: cmd.transports || ["websocket"],
    forceNew: true,
    // The page's settings, a little quicker: a test waits for these.
    reconnectionDelay: 200,
    reconnectionDelayMax: 1000,
    randomizationFactor: 0.2,
    timeout: 5000,
  });
  if (cmd.pid) {
    // What a client that held this session would send: the stock client
    // puts these two fields in its CONNECT whenever _pid is set.
    socket._pid = cmd.pid;
    socket._lastOffset = cmd.offset;
  }
  socket.on("connect", () => {
    out({ type: "connect", ...state(), transport: socket.io.engine.transport.name });
  });
  socket.onAny((name, ...args) => out({ type: "event", name, args }));
  socket.on("disconnect", (reason) => out({ type: "disconnect", reason }));
  socket.on("connect_error", (err) => {
    out({ type: "connect_error", message: err.message, data: err.data || null });
  });
}

function emit(cmd) {
  socket.timeout(5000).emit(cmd.event, ...(cmd.args || []), (err, ...args) => {
    out({ type: "ack", ref: cmd.ref, error: err ? err.message : null, args });
  });
}

const commands = {
  connect,
  emit,
  pause: () => socket.io.reconnection(false),
  "close-transport": () => socket.io.engine.close(),
  resume: () => {
    socket.io.reconnection(true);
    socket.connect();
  },
  state: () => out({ type: "state", ...state() }),
  disconnect: () => socket.disconnect(),
};

const lines = readline.createInterface({ input: process.stdin });
lines.on("line", (text) => {
  try {
    const cmd = JSON.parse(text);
    commands[cmd.cmd](cmd);
  } catch (err) {
    out({ type: "error", message: String(err && err.stack ? err.stack : err) });
  }
});
// The test closed our stdin (or died): leave, whatever is still open.
lines.on("close", () => {
  if (socket) socket.disconnect();
  process.exit(0);
});
