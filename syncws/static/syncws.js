/*
 * syncws.js: the browser side of syncws's request/reply protocol (docs/protocol.md).
 *
 *   <script src="/syncws.js"></script>
 *   <script>
 *     const peer = new syncws.Peer("ws://" + location.host + "/wsData");
 *     peer.register("add", (msg) => msg.a + msg.b);                  // JSON reply
 *     peer.register("snapshot", async (msg) => new Uint8Array(1024)); // binary reply
 *     peer.onmessage = (msg) => console.log("broadcast", msg);        // anything that is not a request
 *     peer.start();
 *   </script>
 *
 * A function may return a value, a Promise, an ArrayBuffer or a typed array
 * (sent as binary parts with a CRC-32 each, never base64), or throw (the
 * reply then has status 500 and "Type: message"). The connection comes back
 * by itself with exponential backoff and jitter.
 *
 * A message with a "callId" is a request. One the page cannot take (its
 * "cmd" missing or not a string) is answered at once with status 400, so
 * that the caller is released; an unknown cmd gets 404. A message with a
 * "status" and no string "cmd" is a reply, never answered. Everything else
 * (no callId: a broadcast; plain text; binary) goes to onmessage.
 */
(function (global) {
  "use strict";

  const PART_MAGIC = [0x53, 0x57, 0x53, 0x42]; // "SWSB"
  const PART_HEADER_SIZE = 32;

  const CRC_TABLE = (function () {
    const table = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      table[n] = c >>> 0;
    }
    return table;
  })();

  function crc32(bytes) {
    let crc = 0xffffffff;
    for (let i = 0; i < bytes.length; i++) crc = CRC_TABLE[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
    return (crc ^ 0xffffffff) >>> 0;
  }

  function asBytes(value) {
    if (value instanceof ArrayBuffer) return new Uint8Array(value);
    if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
    return null;
  }

  class Peer {
    constructor(url, options) {
      options = options || {};
      this.url = url;
      this.partSize = options.partSize || 1 << 20;
      this.backoffMin = options.backoffMin || 500;
      this.backoffMax = options.backoffMax || 30000;
      // Subprotocols to offer, in order of preference; the server's choice is this.socket.protocol.
      this.protocols = options.protocols || [];
      this.commands = new Map();
      this.onmessage = null;
      this.onopen = null;
      this.onclose = null;
      this.socket = null;
      this.stopped = true;
      this.attempt = 0;
      this.timer = null;
    }

    register(cmd, fn) {
      this.commands.set(cmd, fn);
      return this;
    }

    start() {
      this.stopped = false;
      this._connect();
      return this;
    }

    stop() {
      this.stopped = true;
      clearTimeout(this.timer);
      if (this.socket) this.socket.close(1000, "stopped");
    }

    send(message) {
      if (!this.socket || this.socket.readyState !== WebSocket.OPEN) throw new Error("not connected");
      this.socket.send(typeof message === "string" || asBytes(message) ? message : JSON.stringify(message));
    }

    _connect() {
      const socket = new WebSocket(this.url, this.protocols);
      socket.binaryType = "arraybuffer";
      this.socket = socket;
      socket.onopen = () => {
        this.attempt = 0;
        if (this.onopen) this.onopen();
      };
      socket.onmessage = (event) => this._receive(socket, event.data);
      socket.onclose = (event) => {
        if (this.onclose) this.onclose(event.code, event.reason);
        if (this.stopped) return;
        this.attempt += 1;
        const delay = Math.min(this.backoffMax, this.backoffMin * 2 ** Math.min(this.attempt - 1, 20));
        this.timer = setTimeout(() => this._connect(), delay * (0.5 + Math.random() / 2));
      };
    }

    _receive(socket, data) {
      let msg = data;
      if (typeof data === "string") {
        try {
          msg = JSON.parse(data);
        } catch (err) {
          msg = data;
        }
      }
      const isObject = msg !== null && typeof msg === "object" && !asBytes(msg) && !Array.isArray(msg);
      if (isObject && "callId" in msg && typeof msg.cmd === "string") {
        this._answer(socket, msg); // a request: answered on the connection it came on
      } else if (isObject && "callId" in msg && !("status" in msg)) {
        // A request the page cannot take: say so at once rather than leave the caller waiting.
        const problem = "cmd" in msg ? "has a cmd that is not a string" : "has no cmd";
        this._sendJSON(socket, { cmd: "cmd" in msg ? msg.cmd : null, callId: msg.callId, status: 400, error: "request " + problem });
      } else if (this.onmessage) {
        this.onmessage(msg);
      }
    }

    async _answer(socket, msg) {
      const base = { cmd: msg.cmd, callId: msg.callId };
      const fn = this.commands.get(msg.cmd);
      if (!fn) {
        this._sendJSON(socket, Object.assign(base, { status: 404, error: "unknown command '" + msg.cmd + "'" }));
        return;
      }
      let result;
      try {
        result = await fn(msg);
      } catch (err) {
        const name = (err && err.name) || "Error";
        this._sendJSON(socket, Object.assign(base, { status: 500, error: name + ": " + ((err && err.message) || String(err)) }));
        return;
      }
      const bytes = asBytes(result);
      if (!bytes) {
        const reply = Object.assign({}, base, { status: 200 });
        if (result !== undefined && result !== null) reply.data = result;
        let text;
        try {
          text = JSON.stringify(reply);
        } catch (err) {
          text = JSON.stringify(Object.assign({}, base, { status: 500, error: "TypeError: result is not JSON-serializable: " + err.message }));
        }
        if (socket.readyState === WebSocket.OPEN) socket.send(text);
        return;
      }
      if (!Number.isSafeInteger(msg.callId) || msg.callId < 0) {
        // Binary parts carry the callId as an unsigned 64-bit integer: anything else cannot be sent that way.
        this._sendJSON(socket, Object.assign(base, { status: 400, error: "callId " + JSON.stringify(msg.callId) + " cannot label a binary reply" }));
        return;
      }
      const parts = Math.ceil(bytes.length / this.partSize);
      this._sendJSON(socket, Object.assign(base, { status: 200, dataType: "bytes", size: bytes.length, parts: parts }));
      for (let index = 0; index < parts; index++) {
        const offset = index * this.partSize;
        const slice = bytes.subarray(offset, Math.min(bytes.length, offset + this.partSize));
        const frame = new Uint8Array(PART_HEADER_SIZE + slice.length);
        const view = new DataView(frame.buffer);
        PART_MAGIC.forEach((b, i) => view.setUint8(i, b));
        view.setBigUint64(4, BigInt(msg.callId));
        view.setUint32(12, index);
        view.setUint32(16, parts);
        view.setBigUint64(20, BigInt(offset));
        view.setUint32(28, crc32(slice));
        frame.set(slice, PART_HEADER_SIZE);
        if (socket.readyState !== WebSocket.OPEN) return;
        socket.send(frame);
      }
    }

    _sendJSON(socket, obj) {
      if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(obj));
    }
  }

  global.syncws = { Peer: Peer, crc32: crc32 };
})(typeof window !== "undefined" ? window : globalThis);
