// The chat page: one Socket.IO connection per tab, no framework, no build step.
//
// Flow:
// * A name (kept in localStorage) and a room are sent as the connection's
//   `auth`; a refusal comes back as `connect_error` and is shown on the join
//   form.  The query carries a per-tab `sticky` key (kept in sessionStorage,
//   so a reload keeps it) that NGINX hashes to pick this tab's replica.
//   In open mode `auth.key` (kept in localStorage) makes every tab of this
//   browser under one name one person; a page embedded by a product that
//   signs identities passes `#token=<JWT>` and the token goes as `auth.token`.
// * `welcome` says which replica took the connection: the badge shows it, in
//   a colour derived from its id.  After a replica dies the client reconnects
//   on its own, lands on another replica, and a new `welcome` updates the badge.
// * A message is shown at once as "sending", under an id the page chose.  The
//   server relays every message to the whole room, sender included: the echo
//   with that id marks the message "sent" and says which replica relayed it.
//   An ack with an error is shown next to the message with a "retry" that
//   sends it again under the same id, which the server stores at most once
//   (so a retry after "unknown" or a timeout cannot make a duplicate).
// * Every message carries its room's sequence number (`seq`, with the
//   room's `epoch`).  `welcome` brings the room's recent history; on a
//   reconnection the page sends the last number it saw (`auth.resume`) and
//   the welcome brings exactly what it missed, or a `gap` saying why it
//   cannot.  A number seen twice is dropped; a number ahead of a hole waits
//   while the page asks the server (`history`) for what lies in between.
// * `presence` lists who is in the room (from the welcome, then changes as
//   people come and go), shown beside the conversation with a count.
//
// Everything a peer wrote is inserted with textContent, never as HTML.

"use strict";

(() => {
  const STORAGE = {
    name: "chat.name", room: "chat.room", sticky: "chat.sticky", key: "chat.key",
  };
  const DEFAULT_ROOM = "general";
  const MAX_NAME_LENGTH = 32;
  const ACK_TIMEOUT_MS = 8000;
  const MAX_MESSAGES = 500;
  // A peer's "is typing" fades unless refreshed (a lost "stopped" must not stick).
  const TYPING_SHOWN_MS = 5000;
  const TYPING_REFRESH_MS = 3000;
  const TYPING_IDLE_MS = 2500;

  const $ = (id) => document.getElementById(id);
  const ui = {
    badge: $("server-badge"),
    state: $("conn-state"),
    detail: $("conn-detail"),
    reconnect: $("reconnect-button"),
    joinPanel: $("join-panel"),
    nameForm: $("name-form"),
    nameInput: $("name-input"),
    joinRoomInput: $("join-room-input"),
    nameError: $("name-error"),
    chatPanel: $("chat-panel"),
    roomForm: $("room-form"),
    roomInput: $("room-input"),
    roomError: $("room-error"),
    roomName: $("room-name"),
    people: $("people"),
    peopleCount: $("people-count"),
    myName: $("my-name"),
    changeName: $("change-name"),
    messages: $("messages"),
    typing: $("typing"),
    messageForm: $("message-form"),
    messageInput: $("message-input"),
    template: $("message-template"),
    aboutReplica: $("about-replica"),
    aboutMode: $("about-mode"),
    aboutSticky: $("about-sticky"),
  };

  const chat = {
    socket: null,
    name: load(localStorage, STORAGE.name) || "",
    room: load(sessionStorage, STORAGE.room) || DEFAULT_ROOM,
    server: null,
    byId: new Map(), // message id -> its <li>
    typers: new Map(), // name -> timer that hides their "is typing"
    typing: { active: false, sentAt: 0, idleTimer: 0 },
    // Where this tab stands in the room's numbered history.
    cursor: { epoch: null, seq: 0, waiting: new Map(), repairing: false },
    people: new Map(), // presence id -> name, everyone in the room (or the first few hundred)
    peopleTotal: 0, // people in the room (user ids, not tabs), as the server last counted them
    peopleAsked: 0, // when the whole list was last asked for
  };

  // ---- storage that may be unavailable (private modes, disabled cookies)

  function load(storage, key) {
    try {
      return storage.getItem(key);
    } catch {
      return null;
    }
  }

  function save(storage, key, value) {
    try {
      storage.setItem(key, value);
    } catch {
      // Not remembered; the page still works for this visit.
    }
  }

  function randomKey(storage, name, size) {
    let key = load(storage, name);
    if (!key) {
      const bytes = crypto.getRandomValues(new Uint8Array(size));
      key = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
      save(storage, name, key);
    }
    return key;
  }

  function stickyKey() {
    return randomKey(sessionStorage, STORAGE.sticky, 12);
  }

  // A signed identity handed to the page in its fragment (never sent to a
  // server in a URL): #token=<JWT>.
  const TOKEN = new URLSearchParams(location.hash.slice(1)).get("token");

  // ---- replica colours

  function replicaHue(serverId) {
    let hash = 0x811c9dc5; // FNV-1a
    for (const ch of serverId) {
      hash ^= ch.codePointAt(0);
      hash = Math.imul(hash, 0x01000193);
    }
    // Spread by the golden ratio so similar ids ("replica-1", "replica-2")
    // land far apart on the colour wheel.
    return Math.round((((hash >>> 0) * 0.6180339887) % 1) * 360);
  }

  function paintReplica(element, serverId) {
    element.style.setProperty("--replica-hue", String(replicaHue(serverId)));
  }

  // ---- connection

  function setConnection(state, detail = "") {
    ui.state.textContent = state === "idle" ? "not joined" : state;
    ui.state.dataset.state = state;
    ui.detail.textContent = detail;
    ui.reconnect.hidden = state !== "offline" || !chat.name;
    document.body.dataset.connection = state;
  }

  function connect() {
    if (chat.socket) {
      if (!chat.socket.active) chat.socket.connect();
      return;
    }
    setConnection("connecting");
    const socket = io({
      // A function, so each (re)connection sends the current name and room.
      auth: (send) => {
        const auth = { name: chat.name, room: chat.room };
        if (TOKEN) auth.token = TOKEN;
        else auth.key = randomKey(localStorage, STORAGE.key, 16);
        if (chat.cursor.epoch) {
          auth.resume = { epoch: chat.cursor.epoch, seq: chat.cursor.seq };
        }
        send(auth);
      },
      query: { sticky: stickyKey() },
      reconnectionDelay: 500,
      reconnectionDelayMax: 2000,
      timeout: 5000,
    });
    chat.socket = socket;

    socket.on("connect", () => setConnection("connected"));
    socket.on("welcome", onWelcome);
    socket.on("message", feed);
    socket.on("presence", onPresence);
    socket.on("typing", onTyping);
    socket.on("disconnect", (reason) => {
      clearTypers();
      stopTyping(false);
      if (socket.active) {
        setConnection("reconnecting", describe(reason));
      } else {
        setConnection("offline", reason === "io client disconnect" ? "" : describe(reason));
      }
    });
    socket.on("connect_error", (err) => {
      if (socket.active) {
        // A transport failure: the manager keeps trying.
        setConnection(navigator.onLine === false ? "offline" : "reconnecting", err.message);
        return;
      }
      // The server refused us (bad name or room): ask again.
      setConnection("offline", "refused");
      showJoin(err.message);
    });
    socket.io.on("reconnect_attempt", (attempt) => {
      if (!socket.connected) ui.detail.textContent = `attempt ${attempt}`;
    });
  }

  function describe(reason) {
    const reasons = {
      "transport close": "lost the connection to the server",
      "transport error": "lost the connection to the server",
      "ping timeout": "the server stopped answering",
      "io server disconnect": "the server closed the connection",
    };
    return reasons[reason] || reason;
  }

  function onWelcome(welcome) {
    const previous = chat.server;
    chat.server = welcome.server;
    chat.name = welcome.name;
    ui.myName.textContent = welcome.name;
    ui.badge.textContent = welcome.server;
    ui.badge.title = `Connected to replica ${welcome.server} (${welcome.mode} backplane)`;
    ui.badge.hidden = false;
    paintReplica(ui.badge, welcome.server);
    ui.aboutReplica.textContent = welcome.server;
    ui.aboutMode.textContent = welcome.mode;
    ui.aboutSticky.textContent = stickyKey();
    ui.aboutSticky.title = `NGINX hashes this key to pick the replica: ${stickyKey()}`;
    if (Number.isInteger(welcome.max_message_length)) {
      ui.messageInput.maxLength = welcome.max_message_length;
    }
    const newRoom = welcome.room !== chat.room || !ui.roomName.textContent;
    if (newRoom) enterRoom(welcome.room);
    if (previous === null) {
      addNotice(`connected to ${welcome.server}`);
    } else if (!newRoom) {
      addNotice(`reconnected to ${welcome.server} (was ${previous})`);
    }
    takeHistory(welcome, newRoom);
    setPeople(welcome.presence || [], welcome.presence_count);
  }

  // ---- numbered history

  function takeHistory(welcome, newRoom) {
    const cursor = chat.cursor;
    const history = Array.isArray(welcome.history) ? welcome.history : [];
    if (newRoom || !welcome.resumed) {
      // Start where the history given starts (messages already on screen
      // are recognised by id and not shown twice).
      const first = history.length ? history[0].seq - 1 : welcome.seq || 0;
      restartCursor(welcome.epoch, first);
    }
    if (welcome.gap) addNotice(`some messages are missing: ${welcome.gap}`);
    if (history.length && (newRoom || !welcome.resumed)) addNotice("earlier messages");
    for (const message of history) feed(message);
    if (Number.isInteger(welcome.seq) && welcome.epoch === cursor.epoch) {
      cursor.seq = Math.max(cursor.seq, welcome.seq);
    }
  }

  function restartCursor(epoch, seq) {
    chat.cursor.epoch = epoch || null;
    chat.cursor.seq = seq;
    chat.cursor.waiting.clear();
  }

  // Show a numbered message once, in order; hold it if an earlier one is missing.
  function feed(message) {
    const cursor = chat.cursor;
    if (message.room !== chat.room) return; // numbered in another room's sequence
    if (!Number.isInteger(message.seq)) {
      onMessage(message);
      return;
    }
    if (cursor.epoch === null) {
      restartCursor(message.epoch, message.seq - 1);
    } else if (message.epoch !== cursor.epoch) {
      addNotice("the room's history was reset");
      restartCursor(message.epoch, 0);
    }
    if (message.seq <= cursor.seq || cursor.waiting.has(message.seq)) return;
    cursor.waiting.set(message.seq, message);
    while (cursor.waiting.has(cursor.seq + 1)) {
      cursor.seq += 1;
      const next = cursor.waiting.get(cursor.seq);
      cursor.waiting.delete(cursor.seq);
      onMessage(next);
    }
    if (cursor.waiting.size && !cursor.repairing) {
      cursor.repairing = true;
      setTimeout(repair, 200); // it may still arrive on its own
    }
  }

  // A number was skipped: ask for what lies between.
  function repair() {
    const cursor = chat.cursor;
    const socket = chat.socket;
    const done = (gap) => {
      cursor.repairing = false;
      if (!cursor.waiting.size) return;
      addNotice(`some messages are missing: ${gap || "they could not be fetched"}`);
      cursor.seq = Math.min(...cursor.waiting.keys()) - 1;
      const held = [...cursor.waiting.values()];
      cursor.waiting.clear();
      for (const message of held) feed(message);
    };
    if (!cursor.waiting.size) {
      cursor.repairing = false;
      return;
    }
    if (!socket || !socket.connected) {
      done();
      return;
    }
    const asked = { after: cursor.seq, epoch: cursor.epoch };
    socket.timeout(ACK_TIMEOUT_MS).emit("history", asked, (err, answer) => {
      if (!err && answer && answer.ok) {
        const messages = answer.messages || [];
        for (const message of messages) feed(message);
        // An answer carries at most HISTORY_MAX_BYTES: ask for the rest.
        if (answer.truncated && messages.length && cursor.waiting.size && !answer.gap) {
          repair();
          return;
        }
        done(answer.gap);
      } else {
        done((answer && answer.error) || (err && err.message));
      }
    });
  }

  // ---- presence

  // `total` is the room's count of people; the server lists at most a
  // few hundred of them, so a big room's list is partial.
  function setPeople(list, total) {
    chat.people.clear();
    for (const person of list) chat.people.set(person.id, person.name);
    chat.peopleTotal = Number.isInteger(total) ? total : list.length;
    renderPeople();
  }

  function names() {
    return new Set(chat.people.values());
  }

  function onPresence(event) {
    if (event.room !== chat.room) return;
    const before = names();
    for (const person of event.joined || []) chat.people.set(person.id, person.name);
    for (const person of event.left || []) chat.people.delete(person.id);
    const after = names();
    const came = [...after].filter((name) => !before.has(name) && name !== chat.name);
    const went = [...before].filter((name) => !after.has(name));
    for (const name of went) forgetTyper(name);
    if (came.length) addNotice(summarise(came, "joined"));
    if (went.length) addNotice(summarise(went, "left"));
    const partial = chat.peopleTotal > chat.people.size;
    if (Number.isInteger(event.count)) chat.peopleTotal = event.count;
    renderPeople();
    // A whole list that missed a change (the backplane was down) is asked for again.
    if (!partial && Number.isInteger(event.count) && event.count !== chat.people.size) {
      askPeople();
    }
  }

  function summarise(people, verb) {
    if (people.length <= 3) return `${people.join(", ")} ${verb}`;
    return `${people.slice(0, 2).join(", ")} and ${people.length - 2} others ${verb}`;
  }

  function askPeople() {
    const socket = chat.socket;
    const now = Date.now();
    if (!socket || !socket.connected || now - chat.peopleAsked < 2000) return;
    chat.peopleAsked = now;
    socket.timeout(ACK_TIMEOUT_MS).emit("presence", {}, (err, answer) => {
      if (!err && answer && answer.ok && answer.room === chat.room) {
        setPeople(answer.presence, answer.count);
      }
    });
  }

  function renderPeople() {
    // One line per person, however many tabs they have open.
    const counts = new Map();
    for (const name of chat.people.values()) counts.set(name, (counts.get(name) || 0) + 1);
    const sorted = [...counts.keys()].sort((a, b) => a.localeCompare(b));
    ui.people.replaceChildren(...sorted.map((name) => {
      const li = document.createElement("li");
      li.textContent = name;
      if (name === chat.name) li.classList.add("me");
      return li;
    }));
    const hidden = Math.max(0, chat.peopleTotal - chat.people.size);
    if (hidden) {
      const more = document.createElement("li");
      more.className = "more";
      more.textContent = `and ${hidden} more`;
      ui.people.append(more);
    }
    ui.peopleCount.textContent = String(sorted.length + hidden);
  }

  // ---- join form (name prompt)

  function showJoin(error = "") {
    ui.joinPanel.hidden = false;
    ui.chatPanel.hidden = true;
    ui.nameInput.value = chat.name;
    ui.joinRoomInput.value = chat.room === DEFAULT_ROOM ? "" : chat.room;
    ui.nameError.textContent = error;
    ui.nameInput.focus();
  }

  function showChat() {
    ui.joinPanel.hidden = true;
    ui.chatPanel.hidden = false;
    ui.myName.textContent = chat.name;
    ui.roomInput.value = chat.room;
    ui.roomName.textContent = chat.room;
    ui.messageInput.focus();
  }

  ui.nameForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const name = ui.nameInput.value.trim();
    if (name.length < 1 || name.length > MAX_NAME_LENGTH) {
      ui.nameError.textContent = `name must be 1 to ${MAX_NAME_LENGTH} characters`;
      ui.nameInput.focus();
      return;
    }
    chat.name = name;
    chat.room = ui.joinRoomInput.value.trim() || DEFAULT_ROOM;
    save(localStorage, STORAGE.name, name);
    save(sessionStorage, STORAGE.room, chat.room);
    ui.nameError.textContent = "";
    showChat();
    connect();
  });

  ui.changeName.addEventListener("click", () => {
    if (chat.socket) chat.socket.disconnect();
    chat.server = null; // the next welcome is a fresh start, not a reconnection
    showJoin();
  });

  ui.reconnect.addEventListener("click", () => {
    if (!chat.name) {
      showJoin();
      return;
    }
    connect();
  });

  // ---- rooms

  ui.roomForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const room = ui.roomInput.value.trim();
    ui.roomError.textContent = "";
    if (!room || room === chat.room) {
      ui.roomInput.value = chat.room;
      return;
    }
    const socket = chat.socket;
    if (!socket || !socket.connected) {
      ui.roomError.textContent = "not connected: try again when connected";
      return;
    }
    socket.timeout(ACK_TIMEOUT_MS).emit("join", { room }, (err, ack) => {
      if (err) {
        ui.roomError.textContent = `could not switch room: ${err.message}`;
      } else if (!ack || !ack.ok) {
        ui.roomError.textContent = (ack && ack.error) || "could not switch room";
      } else if (ack.room !== chat.room) {
        enterRoom(ack.room); // the welcome normally comes first and does this
      }
    });
  });

  function enterRoom(room) {
    chat.room = room;
    save(sessionStorage, STORAGE.room, room);
    ui.roomName.textContent = room;
    ui.roomInput.value = room;
    ui.messages.replaceChildren();
    chat.byId.clear();
    restartCursor(null, 0);
    chat.people.clear();
    chat.peopleTotal = 0;
    renderPeople();
    clearTypers();
    addNotice(`you are in #${room}`);
  }

  // ---- messages

  function buildMessage({ name, text, ts }) {
    const li = ui.template.content.firstElementChild.cloneNode(true);
    li.querySelector(".name").textContent = name;
    li.querySelector(".text").textContent = text;
    fillTime(li.querySelector(".time"), ts);
    return li;
  }

  function fillTime(time, ts) {
    const date = new Date(ts);
    if (Number.isNaN(date.getTime())) return;
    time.dateTime = date.toISOString();
    time.textContent = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    time.title = date.toLocaleString();
  }

  function setServer(li, serverId) {
    const server = li.querySelector(".server");
    server.textContent = serverId;
    server.title = `relayed by ${serverId}`;
    paintReplica(server, serverId);
  }

  function setStatus(li, state, error = "") {
    const follow = nearBottom();
    li.dataset.state = state;
    const status = li.querySelector(".status");
    status.replaceChildren();
    if (state === "sending") {
      status.textContent = "sending…";
    } else if (state === "failed") {
      const reason = document.createElement("span");
      reason.className = "error";
      reason.textContent = error;
      status.append(reason);
      const retry = document.createElement("button");
      retry.type = "button";
      retry.className = "link retry";
      retry.textContent = "retry";
      retry.addEventListener("click", () => {
        chat.byId.delete(li.dataset.id);
        li.remove();
        send(li.querySelector(".text").textContent, li.dataset.id);
      });
      status.append(" ", retry);
    }
    if (follow) scrollToBottom();
  }

  function nearBottom() {
    const list = ui.messages;
    return list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  }

  function scrollToBottom() {
    ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  function append(li) {
    const list = ui.messages;
    const follow = nearBottom();
    list.append(li);
    while (list.childElementCount > MAX_MESSAGES) {
      const oldest = list.firstElementChild;
      if (oldest.dataset.id) chat.byId.delete(oldest.dataset.id);
      oldest.remove();
    }
    if (follow || li.classList.contains("mine")) scrollToBottom();
  }

  function addNotice(text, ts = Date.now()) {
    const li = document.createElement("li");
    li.className = "notice";
    const time = document.createElement("time");
    fillTime(time, ts);
    const body = document.createElement("span");
    body.textContent = text;
    li.append(time, " ", body);
    append(li);
  }

  function newMessageId() {
    const bytes = crypto.getRandomValues(new Uint8Array(12));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function send(text, id = newMessageId()) {
    const li = buildMessage({ name: chat.name, text, ts: Date.now() });
    li.classList.add("mine");
    li.dataset.id = id;
    chat.byId.set(id, li); // its echo finds it by id, even before the ack
    setStatus(li, "sending");
    append(li);
    const socket = chat.socket;
    if (!socket || !socket.connected) {
      // Not buffered for later: the user decides whether to retry.
      setStatus(li, "failed", "not sent: not connected");
      return;
    }
    socket.timeout(ACK_TIMEOUT_MS).emit("message", { text, id }, (err, ack) => {
      // A message that went with the room we left, or that its echo already
      // showed as sent, needs no news.
      if (!li.isConnected || li.dataset.state === "sent") return;
      if (err) {
        const timedOut = /timed out/.test(err.message);
        setStatus(li, "failed", timedOut ? "no answer from the server (retry is safe)"
          : `not sent: ${err.message}`);
      } else if (!ack || !ack.ok) {
        // "unknown: …" and "not sent: …" say so already; refusals say why.
        const error = (ack && ack.error) || "refused by the server";
        setStatus(li, "failed", /^(not sent|unknown)\b/.test(error) ? error : `not sent: ${error}`);
      }
    });
  }

  function showEcho(li, message) {
    fillTime(li.querySelector(".time"), message.ts);
    setServer(li, message.server);
    setStatus(li, "sent"); // the echo proves it was stored, whatever the ack said
  }

  function onMessage(message) {
    if (message.room !== chat.room) return; // sent before we switched rooms
    forgetTyper(message.name);
    const known = chat.byId.get(message.id);
    if (known) {
      showEcho(known, message);
      return;
    }
    const li = buildMessage(message);
    li.dataset.id = message.id;
    setServer(li, message.server);
    setStatus(li, "sent");
    chat.byId.set(message.id, li);
    append(li);
  }

  ui.messageForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = ui.messageInput.value.trim();
    if (!text) return;
    ui.messageInput.value = "";
    stopTyping(true);
    send(text);
  });

  // ---- typing indicator

  ui.messageInput.addEventListener("input", () => {
    const socket = chat.socket;
    if (!socket || !socket.connected) return;
    if (!ui.messageInput.value.trim()) {
      stopTyping(true);
      return;
    }
    const now = Date.now();
    if (!chat.typing.active || now - chat.typing.sentAt > TYPING_REFRESH_MS) {
      chat.typing.active = true;
      chat.typing.sentAt = now;
      socket.emit("typing", { typing: true });
    }
    clearTimeout(chat.typing.idleTimer);
    chat.typing.idleTimer = setTimeout(() => stopTyping(true), TYPING_IDLE_MS);
  });

  function stopTyping(tell) {
    clearTimeout(chat.typing.idleTimer);
    if (!chat.typing.active) return;
    chat.typing.active = false;
    if (tell && chat.socket && chat.socket.connected) {
      chat.socket.emit("typing", { typing: false });
    }
  }

  function onTyping(event) {
    // The server relays to everyone else: another tab of ours may be typing.
    if (event.room !== chat.room) return;
    if (!event.typing) {
      forgetTyper(event.name);
      return;
    }
    clearTimeout(chat.typers.get(event.name));
    chat.typers.set(event.name, setTimeout(() => forgetTyper(event.name), TYPING_SHOWN_MS));
    renderTypers();
  }

  function forgetTyper(name) {
    if (!chat.typers.has(name)) return;
    clearTimeout(chat.typers.get(name));
    chat.typers.delete(name);
    renderTypers();
  }

  function clearTypers() {
    for (const timer of chat.typers.values()) clearTimeout(timer);
    chat.typers.clear();
    renderTypers();
  }

  function renderTypers() {
    const names = [...chat.typers.keys()];
    let text = "";
    if (names.length === 1) {
      text = `${names[0]} is typing…`;
    } else if (names.length === 2) {
      text = `${names[0]} and ${names[1]} are typing…`;
    } else if (names.length > 2) {
      text = `${names[0]}, ${names[1]} and ${names.length - 2} more are typing…`;
    }
    ui.typing.textContent = text;
  }

  // ---- start

  window.addEventListener("offline", () => {
    if (!chat.socket || !chat.socket.connected) setConnection("offline", "no network");
  });

  if (typeof io !== "function") {
    setConnection("offline", "the Socket.IO client failed to load");
    return;
  }
  setConnection("idle"); // not an error: nobody asked to connect yet
  if (chat.name) {
    showChat();
    connect();
  } else {
    showJoin();
  }
})();
