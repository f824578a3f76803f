/*
 * comet.js: a dependency-free browser client for the comet long-poll
 * protocol (the Ocsigen_comet wire format; see docs/PROTOCOL.md).
 *
 *   <script src="/comet.js"></script>                  // sets window.Comet
 *   import Comet from "/comet.mjs";                     // as an ES module
 *
 *   const c = new Comet("/comet", {
 *     onMessage(id, text, bytes) {},  // one call per message, in order, once
 *     onEnded(id) {},                 // the channel is gone for good
 *     onGap(id) {},                   // messages of id were lost (history too short)
 *     onState(state, detail) {},      // "polling", "backoff", "stopped"
 *     resume: true,                   // the default: lose nothing between polls
 *   });
 *   c.add("news"); c.add("room/42");  // starts polling
 *   c.remove("news"); c.stop();
 *
 * With resume (PROTOCOL.md section 7) the client keeps each channel's
 * position from the last reply and sends it with every poll, so a message
 * written between two polls, during a backoff, or in a reply that never
 * arrived comes with the next reply, once. resume: false polls as the
 * seed's clients did.
 */
(function (global) {
  "use strict";

  var CONTENT_TYPE = "application/x-ocsigen-comet";
  var ENDED = "ENDED_CHANNEL";
  var GAP = "#GAP";

  function Comet(url, options) {
    if (!(this instanceof Comet)) return new Comet(url, options);
    options = options || {};
    this.url = url;
    this.onMessage = options.onMessage || function () {};
    this.onEnded = options.onEnded || function () {};
    this.onState = options.onState || function () {};
    this.onGap = options.onGap || function () {};
    this.resume = options.resume !== false;
    this.onError = options.onError || function () {};
    // Backoff after a 5xx or a network error: base * 2^n, at most max, plus
    // a random part of up to one base again, as the original client did.
    this.retryBase = options.retryBase || 1000;
    this.retryMax = options.retryMax || 64000;
    this.credentials = options.credentials || "same-origin";
    this._ids = [];
    this._positions = {}; // channel id -> position from the last reply
    this._failures = 0;
    this._running = false;
    this._xhr = null;
    this._timer = null;
    this._restart = false;
  }

  Comet.prototype.channels = function () { return this._ids.slice(); };

  // add registers a channel id and (re)starts polling.
  Comet.prototype.add = function (id) {
    id = String(id);
    if (id === "" || this._ids.indexOf(id) >= 0) return;
    this._ids.push(id);
    this._changed();
  };

  // remove drops a channel id; with none left, polling stops.
  Comet.prototype.remove = function (id) {
    var i = this._ids.indexOf(String(id));
    if (i < 0) return;
    this._ids.splice(i, 1);
    delete this._positions[String(id)]; // added again, it starts from then
    this._changed();
  };

  Comet.prototype.stop = function () {
    this._running = false;
    clearTimeout(this._timer);
    this._abortIfWaiting();
    this._state("stopped");
  };

  Comet.prototype._changed = function () {
    if (this._ids.length === 0) return this.stop();
    if (!this._running) {
      this._running = true;
      this._failures = 0;
      return this._poll();
    }
    // Re-register at once: abort a poll still waiting for its reply. One
    // whose reply has begun to arrive is read to the end first, so nothing
    // the server put in it is lost; the new poll follows it. Resuming, a
    // reply under way can be dropped too: the next poll, from the same
    // positions, gets it again.
    if (this._xhr && !this._abortIfWaiting(this.resume)) {
      this._restart = true;
      return;
    }
    if (!this._xhr) {
      clearTimeout(this._timer);
      this._failures = 0;
      this._poll();
    }
  };

  // _abortIfWaiting aborts the current poll if no reply has started, or
  // whatever its state with always.
  Comet.prototype._abortIfWaiting = function (always) {
    var xhr = this._xhr;
    if (!xhr || (xhr.readyState >= 2 && !always)) return false; // HEADERS_RECEIVED or later
    this._xhr = null;
    xhr.onreadystatechange = null;
    xhr.abort();
    if (this._running) this._poll();
    return true;
  };

  Comet.prototype._state = function (state, detail) {
    try { this.onState(state, detail); } catch (e) { setTimeout(function () { throw e; }); }
  };

  Comet.prototype._poll = function () {
    var self = this;
    if (!self._running || self._ids.length === 0) return;
    var ids = self._ids.slice();
    var xhr = new XMLHttpRequest();
    self._xhr = xhr;
    self._restart = false;
    xhr.open("POST", self.url, true);
    xhr.withCredentials = self.credentials === "include";
    xhr.setRequestHeader("Content-Type", CONTENT_TYPE + "; charset=UTF-8");
    xhr.onreadystatechange = function () {
      if (xhr.readyState !== 4 || self._xhr !== xhr) return;
      self._xhr = null;
      self._done(xhr.status, xhr.responseText, ids);
    };
    self._state("polling", { channels: ids });
    // encodeURIComponent, not escape(): names may be UTF-8 (PROTOCOL.md 1).
    var body = "registration=" + encodeURIComponent(ids.join("\n"));
    if (self.resume) {
      var from = [];
      for (var i = 0; i < ids.length; i++) {
        var p = self._positions[ids[i]];
        if (p !== undefined) from.push(ids[i] + ":" + p);
      }
      body += "&resume=" + encodeURIComponent(from.join("\n"));
    }
    xhr.send(body);
  };

  Comet.prototype._done = function (status, body, ids) {
    if (status === 200) {
      this._failures = 0;
      this._deliver(body, ids);
      return this._next(0);
    }
    // 503 (deactivated, killed, draining), other errors, and status 0 (the
    // network or CORS failed): back off and retry, never give up.
    this._failures++;
    var base = Math.min(this.retryMax, this.retryBase * Math.pow(2, this._failures - 1));
    var delay = Math.round(base + Math.random() * this.retryBase);
    if (status !== 503) {
      try { this.onError({ status: status, body: body }); } catch (e) { setTimeout(function () { throw e; }); }
    }
    this._state("backoff", { status: status, delay: delay, failures: this._failures });
    this._next(delay);
  };

  Comet.prototype._next = function (delay) {
    var self = this;
    if (!self._running) return;
    if (self._restart || delay === 0) return self._poll();
    clearTimeout(self._timer);
    self._timer = setTimeout(function () { self._poll(); }, delay);
  };

  // _deliver reads "id:payload" lines: ENDED_CHANNEL ends a channel, #GAP
  // reports lost messages, @position is where the next poll resumes, any
  // other payload is percent-encoded bytes, decoded as UTF-8. A payload
  // never starts with '#' or '@' (they are percent-encoded).
  Comet.prototype._deliver = function (body, ids) {
    if (body === "") return;
    var lines = body.split("\n");
    for (var i = 0; i < lines.length; i++) {
      var line = lines[i];
      var at = line.lastIndexOf(":"); // a payload never holds ':'
      if (at < 0) continue;
      var id = line.slice(0, at), payload = line.slice(at + 1);
      if (payload === ENDED) {
        var k = this._ids.indexOf(id);
        if (k >= 0) this._ids.splice(k, 1);
        delete this._positions[id];
        this._safe(this.onEnded, [id]);
        continue;
      }
      if (payload === GAP) {
        this._safe(this.onGap, [id]);
        continue;
      }
      if (payload.charAt(0) === "@") {
        if (this._ids.indexOf(id) >= 0) this._positions[id] = payload.slice(1);
        continue;
      }
      var bytes = percentDecode(payload);
      this._safe(this.onMessage, [id, utf8(bytes), bytes]);
    }
    if (this._ids.length === 0) this.stop();
  };

  // _safe calls a handler without letting its exception stop the loop.
  Comet.prototype._safe = function (f, args) {
    try { f.apply(null, args); } catch (e) { setTimeout(function () { throw e; }); }
  };

  function percentDecode(s) {
    var out = new Uint8Array(s.length), n = 0;
    for (var i = 0; i < s.length; i++) {
      var c = s.charCodeAt(i);
      if (c === 37 && i + 2 < s.length && /^[0-9A-Fa-f]{2}$/.test(s.substr(i + 1, 2))) {
        out[n++] = parseInt(s.substr(i + 1, 2), 16);
        i += 2;
      } else {
        out[n++] = c & 0xff;
      }
    }
    return out.subarray(0, n);
  }

  var decoder = typeof TextDecoder !== "undefined" ? new TextDecoder("utf-8") : null;
  function utf8(bytes) {
    if (decoder) return decoder.decode(bytes);
    var s = "";
    for (var i = 0; i < bytes.length; i++) s += "%" + (bytes[i] < 16 ? "0" : "") + bytes[i].toString(16);
    try { return decodeURIComponent(s); } catch (e) { return unescape(s); }
  }

  Comet.percentDecode = percentDecode;
  global.Comet = Comet;
})(typeof globalThis !== "undefined" ? globalThis : this);
