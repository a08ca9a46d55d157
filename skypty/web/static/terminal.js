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
  var ws = null, retry = 500, closedByShell = false;
  var status = document.getElementById("status");
  var enc = new TextEncoder();

  function say(text) { status.textContent = text; window.skyptyStatus = text; }

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

  function sendResize() {
    if (ws && ws.readyState === 1) {
      ws.send(JSON.stringify({type: "resize", cols: term.cols, rows: term.rows}));
    }
  }

  function connect() {
    say("connecting…");
    ws = new WebSocket(url(), protocols());
    ws.binaryType = "arraybuffer";
    ws.onopen = function () { retry = 500; say("connected"); fit.fit(); sendResize(); };
    ws.onmessage = function (ev) {
      if (typeof ev.data === "string") {
        var msg = JSON.parse(ev.data);
        if (msg.type === "session") { sessionId = window.skyptySession = msg.id; if (msg.offset !== undefined) received = msg.offset; }
        else if (msg.type === "error") {
          // A refusal or an unreachable host: say it once; reloading the page tries again.
          closedByShell = true;
          term.write("\r\n\x1b[31m" + msg.message + "\x1b[0m\r\n"); say(msg.message);
        }
        else if (msg.type === "exit") { closedByShell = true; say("session ended"); }
        return;
      }
      var bytes = new Uint8Array(ev.data);
      received += bytes.length;
      window.skyptyBytes = (window.skyptyBytes || 0) + bytes.length;
      term.write(bytes);
    };
    ws.onclose = function () {
      if (closedByShell) { return; }
      say("disconnected; reconnecting…");
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 10000);
    };
  }

  term.onData(function (d) { if (ws && ws.readyState === 1) { ws.send(enc.encode(d)); } });
  term.onBinary(function (d) {
    if (ws && ws.readyState === 1) {
      var b = new Uint8Array(d.length);
      for (var i = 0; i < d.length; i++) { b[i] = d.charCodeAt(i) & 255; }
      ws.send(b);
    }
  });
  term.onResize(sendResize);
  window.addEventListener("resize", function () { fit.fit(); });
  window.skyptyDropSocket = function () { if (ws) { ws.close(); } };  // for tests
  fit.fit();
  if (needsToken && !token) {
    var how = "no token in this tab: open the URL printed by `skypty-client url`";
    term.write("\x1b[31m" + how + "\x1b[0m\r\n"); say(how);
  } else {
    connect();
  }
  term.focus();
})();
