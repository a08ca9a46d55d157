// skypty web terminal: xterm.js over a WebSocket on this page's own path.
// Binary frames carry terminal bytes; text frames carry JSON control messages.
(function () {
  "use strict";
  var term = new Terminal({cursorBlink: true, scrollback: 10000, cols: 100, rows: 30});
  var fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(document.getElementById("terminal"));
  window.skyptyTerm = term;  // for tests and the curious

  // The host's token (given once as ?token=) lives in this tab's sessionStorage,
  // which browsers keep per origin, port included; a cookie would reach every
  // port on 127.0.0.1.  It leaves the page only in our own WebSocket handshake
  // (a subprotocol), and is taken out of the address bar at once.
  var fromLink = new URLSearchParams(location.search).has("token");  // the URL `skypty-client url` made
  var token = (function () {
    var q = new URLSearchParams(location.search), t = q.get("token");
    try {
      if (t) { sessionStorage.setItem("skypty-token", t); } else { t = sessionStorage.getItem("skypty-token"); }
    } catch (e) { /* no storage: this page view only */ }
    if (q.has("token")) {
      q.delete("token");
      var rest = q.toString();
      history.replaceState(history.state, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
    }
    return t || "";
  })();
  var needsToken = document.body.getAttribute("data-needs-token") === "yes";
  function protocols() { return token ? ["skypty", "skypty.token." + token] : ["skypty"]; }
  // Any page this tab visits later may send it back here (the tab keeps the
  // token): it must not type ?commands= into a shell.  Only a URL that
  // carries the token, which no other page knows, may.
  var commandsAllowed = fromLink || !needsToken;

  var params = new URLSearchParams(location.search);
  var sessionId = params.get("sid") || "";
  var received = 0;          // bytes of this session shown so far
  var ws = null, retry = 500, closedByShell = false, ended = false;
  var status = document.getElementById("status");
  var enc = new TextEncoder();
  // Contact (as the command-line client): a ping when nothing was heard for
  // QUIET_PING ms, "no contact" in the status line after NO_CONTACT ms, and a
  // persistent session's socket replaced after DEAD_PATH ms (a dead path, e.g.
  // a laptop that changed networks: the browser itself notices only minutes later).
  var QUIET_PING = 2000, NO_CONTACT = 8000, DEAD_PATH = 5000;
  var lastHeard = Date.now(), lastPing = 0, stalled = false;

  var said = window.skyptyStatusLog = [];  // every status shown, for tests and the curious
  function say(text) {
    status.textContent = text; window.skyptyStatus = text;
    if (said[said.length - 1] !== text) { said.push(text); if (said.length > 50) { said.shift(); } }
  }

  // The end of a session is always a visible line, never a silently dead page.
  function sessionClosed(why) {
    if (ended) { return; }
    ended = closedByShell = true;
    term.write("\r\n\x1b[33m[session closed — reload to reconnect]\x1b[0m\r\n");
    say(why ? why + "; session closed" : "session closed");
  }

  function url() {
    var q = new URLSearchParams(location.search);
    q.delete("token");
    if (!commandsAllowed) { q.delete("commands"); }
    if (sessionId) { q.set("sid", sessionId); q.set("offset", String(received)); q.delete("commands"); }
    // The shell starts at this size (a resize sent after the open could lose the race).
    fit.fit();
    q.set("rows", String(term.rows)); q.set("cols", String(term.cols));
    var scheme = location.protocol === "https:" ? "wss:" : "ws:";
    var qs = q.toString();
    return scheme + "//" + location.host + location.pathname + (qs ? "?" + qs : "");
  }

  function send(data) {
    if (ws && ws.readyState === 1 && !stalled) { ws.send(data); }
  }

  function sendResize() { send(JSON.stringify({type: "resize", cols: term.cols, rows: term.rows})); }

  function heard() {
    if (Date.now() - lastHeard >= NO_CONTACT) { say("connected"); }
    lastHeard = Date.now();
  }

  function connect() {
    say("connecting…");
    stalled = false;
    var sock = ws = new WebSocket(url(), protocols());
    sock.binaryType = "arraybuffer";
    sock.onopen = function () { lastHeard = Date.now(); say("connected"); fit.fit(); sendResize(); };
    sock.onmessage = function (ev) {
      if (sock !== ws || stalled) { return; }
      heard();
      if (typeof ev.data === "string") {
        var msg = JSON.parse(ev.data);
        if (msg.type === "session") {
          sessionId = window.skyptySession = msg.id; retry = 500;
          if (msg.offset !== undefined) { received = msg.offset; }
        }
        else if (msg.type === "lost") {
          received += msg.bytes;
          term.write("\r\n[skypty: " + msg.bytes + " bytes of output were lost while disconnected]\r\n");
        }
        else if (msg.type === "error") {
          // A refusal, an unreachable host, a session that is gone: say it once.
          term.write("\r\n\x1b[31m" + msg.message + "\x1b[0m\r\n");
          sessionClosed(msg.message);
        }
        else if (msg.type === "exit") { sessionClosed("the shell exited"); }
        return;
      }
      var bytes = new Uint8Array(ev.data);
      received += bytes.length;
      window.skyptyBytes = (window.skyptyBytes || 0) + bytes.length;
      term.write(bytes);
    };
    sock.onclose = function () {
      if (sock !== ws || closedByShell) { return; }
      if (!sessionId) {  // a plain shell ends with its socket: nothing to reattach
        sessionClosed("disconnected");
        return;
      }
      say("disconnected; reattaching…");
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 2000);  // output must resume soon after the link does
    };
  }

  // A persistent session's silent socket is dropped and the session reattached
  // on a new one; a plain shell can only wait for its socket to come back.
  function replaceSocket() {
    var old = ws;
    ws = null;
    if (old) { try { old.close(); } catch (e) { /* already closing */ } }
    connect();
  }

  setInterval(function () {
    if (closedByShell || !ws || ws.readyState !== 1) { return; }
    var now = Date.now(), quiet = now - lastHeard;
    if (quiet >= QUIET_PING && now - lastPing >= QUIET_PING) {
      lastPing = now;
      send(JSON.stringify({type: "ping"}));
    }
    if (sessionId && quiet >= DEAD_PATH) {
      say("no contact with the host for " + Math.round(quiet / 1000) + " s; reattaching…");
      replaceSocket();
    } else if (quiet >= NO_CONTACT) {
      say("no contact with the host for " + Math.round(quiet / 1000) + " s");
    }
  }, 500);

  term.onData(function (d) { send(enc.encode(d)); });
  term.onBinary(function (d) {
    var b = new Uint8Array(d.length);
    for (var i = 0; i < d.length; i++) { b[i] = d.charCodeAt(i) & 255; }
    send(b);
  });
  term.onResize(sendResize);
  window.addEventListener("resize", function () { fit.fit(); });
  window.skyptyDropSocket = function () { if (ws) { ws.close(); } };  // for tests
  // for tests: this socket's path goes silent (nothing crosses either way)
  window.skyptyStallSocket = function () { stalled = true; };
  fit.fit();
  if (needsToken && !token) {
    var how = "no token in this tab: open the URL printed by `skypty-client url`";
    term.write("\x1b[31m" + how + "\x1b[0m\r\n"); say(how);
  } else {
    connect();
  }
  term.focus();
})();
