/*
 * syncws.js: the browser side of syncws's call protocol (docs/protocol.md), in both directions.
 *
 *   <script src="/syncws.js"></script>
 *   <script>
 *     const peer = new syncws.Peer("ws://" + location.host + "/wsData");
 *     peer.register("add", (msg) => msg.a + msg.b);                  // the server asks, the page answers
 *     peer.register("snapshot", async (msg) => new Uint8Array(1024)); // binary reply
 *     peer.onmessage = (msg) => console.log("broadcast", msg);        // anything that is not a call
 *     peer.onopen = async () => {
 *       const reply = await peer.request({cmd: "getSettings"}, {timeout: 5000}); // the page asks, the server answers
 *       console.log(reply.data);
 *     };
 *     peer.start();
 *   </script>
 *
 * The server asks, the page answers. A function registered for a cmd is
 * called as fn(msg, call) and may return a value, a Promise, an ArrayBuffer
 * or a typed array (sent as binary parts with a CRC-32 each, never base64),
 * or throw (the reply then has status 500 and "Type: message"). An unknown
 * cmd gets 404; a message with a "callId" and no "status" whose "cmd" is
 * missing or not a string gets 400 at once, so that its caller is released.
 * call.cancelled turns true (and call.signal, an AbortSignal, aborts) when
 * the server gives up on the call ({"cancel": callId}: its timeout passed)
 * or the connection closes; the reply of a cancelled call is not sent.
 *
 * The page asks, the server answers. peer.request(msg, {timeout, onProgress})
 * sends msg (an object with a string cmd) with a callId of the page's own
 * (counting from 1) and returns a Promise of the reply object. A binary reply
 * resolves with reply.data an ArrayBuffer (dataType, size and, for a numpy
 * array, dtype and shape stay on the reply); onProgress(received, total) is
 * called after each part. The Promise rejects, never throws, with:
 *   TypeError          msg is not an object with a string cmd, or has a
 *                      "status" (it would read as a reply); RangeError for
 *                      a timeout that is negative or not a number
 *   NotConnected       the connection is not open now
 *   RequestError       the server answered with a status other than 200
 *                      (.status, .error, .reply), or a binary reply came
 *                      damaged (status 502: CRC-32 mismatch, part out of
 *                      order, parts that do not add up to its size)
 *   RequestTimeout     no reply (or next part of one) within timeout ms;
 *                      {"cancel": callId} is then sent and the call forgotten
 *   ConnectionClosed   the connection closed (.code, .reason): every pending
 *                      request rejects at once, also on stop()
 * A late reply to a call the page gave up on is dropped silently.
 *
 * The timeout (ms) is unbounded when absent, null, Infinity or past
 * setTimeout's 2^31 - 1 ms.
 *
 * A message is a reply if it is an object with a "status": one whose callId
 * names a pending call of the page's is taken by it, one that names a call
 * the page made earlier is dropped, any other goes to onmessage (e.g. the
 * server's {"cmd": "error", "status": 403}). It is a request if it has a
 * string "cmd", a "callId" and no "status"; a cancel if it is {"cancel": N}.
 * A binary message that starts with "SWSB" and the callId of a call the page
 * made is a part of its reply (dropped if the page no longer waits for it).
 * Everything else (a broadcast without a callId, plain text, other binary)
 * goes to onmessage. The connection comes back by itself with exponential
 * backoff and jitter.
 */
(function (global) {
  "use strict";

  const PART_MAGIC = [0x53, 0x57, 0x53, 0x42]; // "SWSB"
  const PART_HEADER_SIZE = 32;
  const BINARY_TYPES = ["bytes", "ndarray"];
  const MAX_TIMER = 0x7fffffff; // setTimeout fires at once for a delay past this: longer means no bound

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

  function isPlainObject(value) {
    return value !== null && typeof value === "object" && !Array.isArray(value) && !asBytes(value);
  }

  function has(obj, field) {
    return Object.prototype.hasOwnProperty.call(obj, field);
  }

  // ------------------------------------------------------------------ errors

  class RequestError extends Error {
    constructor(status, error, reply) {
      super("request " + JSON.stringify(reply && reply.cmd) + " failed with status " + status + ": " + error);
      this.name = "RequestError";
      this.status = status;
      this.error = error;
      this.reply = reply;
    }
  }

  class RequestTimeout extends Error {
    constructor(callId, cmd, timeout) {
      super("request " + JSON.stringify(cmd) + " (callId " + callId + ") got no reply within " + timeout + " ms");
      this.name = "RequestTimeout";
      this.callId = callId;
      this.cmd = cmd;
      this.timeout = timeout;
    }
  }

  class ConnectionClosed extends Error {
    constructor(code, reason) {
      super("connection closed with code " + code + (reason ? ": " + reason : ""));
      this.name = "ConnectionClosed";
      this.code = code;
      this.reason = reason;
    }
  }

  class NotConnected extends Error {
    constructor(message) {
      super(message);
      this.name = "NotConnected";
    }
  }

  function damaged(call, reason) {
    const reply = { cmd: call.cmd, callId: call.callId, status: 502 };
    return new RequestError(502, "damaged binary reply: " + reason, reply);
  }

  // ------------------------------------------------------------------ a call the server makes

  /* The call a command function answers: its second argument. */
  class IncomingCall {
    constructor(cmd, callId) {
      this.cmd = cmd;
      this.callId = callId;
      this.cancelled = false;
      this._abort = typeof AbortController === "function" ? new AbortController() : null;
      this.signal = this._abort ? this._abort.signal : null;
    }

    _cancel() {
      if (this.cancelled) return;
      this.cancelled = true;
      if (this._abort) this._abort.abort();
    }
  }

  // ------------------------------------------------------------------ the peer

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
      this.nextCallId = 1; // the page's own calls: numbered from 1, never reused
      this.pending = new Map(); // callId -> the page's call waiting for its reply
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
      const socket = this.socket;
      if (socket) {
        this._closed(socket, 1000, "stopped");
        socket.close(1000, "stopped");
      }
    }

    send(message) {
      if (!this.socket || this.socket.readyState !== WebSocket.OPEN) throw new NotConnected("not connected");
      this.socket.send(typeof message === "string" || asBytes(message) ? message : JSON.stringify(message));
    }

    /* Ask the server: a Promise of its reply (see the top of this file). Rejects, never throws. */
    request(msg, options) {
      options = options || {};
      if (!isPlainObject(msg) || typeof msg.cmd !== "string") {
        return Promise.reject(new TypeError("a request must be an object with a string cmd"));
      }
      if (has(msg, "status")) {
        return Promise.reject(new TypeError("a request must not have a status (it would be read as a reply)"));
      }
      let timeout = options.timeout;
      if (timeout !== undefined && timeout !== null) {
        if (typeof timeout !== "number" || Number.isNaN(timeout) || timeout < 0) {
          return Promise.reject(new RangeError("timeout must be a non-negative number of ms, not " + String(timeout)));
        }
        if (timeout > MAX_TIMER) timeout = null;
      } else {
        timeout = null;
      }
      const socket = this.socket;
      if (!socket || socket.readyState !== WebSocket.OPEN) {
        return Promise.reject(new NotConnected("not connected: request " + JSON.stringify(msg.cmd) + " not sent"));
      }
      const callId = this.nextCallId++;
      let text;
      try {
        text = JSON.stringify(Object.assign({}, msg, { callId: callId }));
      } catch (err) {
        return Promise.reject(err);
      }
      return new Promise((resolve, reject) => {
        const call = {
          callId: callId,
          cmd: msg.cmd,
          socket: socket,
          timeout: timeout,
          timer: null,
          onProgress: typeof options.onProgress === "function" ? options.onProgress : null,
          header: null, // a binary reply's header, once it came
          buffer: null,
          received: 0,
          nextPart: 0,
          resolve: resolve,
          reject: reject,
        };
        this.pending.set(callId, call);
        this._arm(call);
        try {
          socket.send(text);
        } catch (err) {
          this._settle(call, err);
        }
      });
    }

    /* (Re)start the wait for the call's reply or for the next part of it. */
    _arm(call) {
      clearTimeout(call.timer);
      if (call.timeout === null) return;
      call.timer = setTimeout(() => {
        if (this.pending.get(call.callId) !== call) return;
        this._settle(call, new RequestTimeout(call.callId, call.cmd, call.timeout));
        if (call.socket.readyState === WebSocket.OPEN) call.socket.send(JSON.stringify({ cancel: call.callId }));
      }, call.timeout);
    }

    /* End a call of the page's: forget it, then resolve with a reply or reject with an Error. */
    _settle(call, outcome) {
      clearTimeout(call.timer);
      this.pending.delete(call.callId);
      call.buffer = null;
      if (outcome instanceof Error) call.reject(outcome);
      else call.resolve(outcome);
    }

    /* The socket closed (or stop() closes it): every call of the page on it fails now; every call it answers is cancelled. */
    _closed(socket, code, reason) {
      for (const call of Array.from(this.pending.values())) {
        if (call.socket === socket) this._settle(call, new ConnectionClosed(code, reason));
      }
      if (socket._syncwsAnswering) {
        for (const call of socket._syncwsAnswering.values()) call._cancel();
        socket._syncwsAnswering.clear();
      }
    }

    _connect() {
      const socket = new WebSocket(this.url, this.protocols);
      socket.binaryType = "arraybuffer";
      socket._syncwsAnswering = new Map(); // callId -> IncomingCall: the server's calls this page answers on this socket
      this.socket = socket;
      socket.onopen = () => {
        this.attempt = 0;
        if (this.onopen) this.onopen();
      };
      socket.onmessage = (event) => this._receive(socket, event.data);
      socket.onclose = (event) => {
        this._closed(socket, event.code, event.reason);
        if (this.onclose) {
          try {
            this.onclose(event.code, event.reason);
          } catch (err) {
            console.error("syncws: onclose failed", err); // and the page still reconnects
          }
        }
        if (this.stopped || socket !== this.socket) return;
        this.attempt += 1;
        const delay = Math.min(this.backoffMax, this.backoffMin * 2 ** Math.min(this.attempt - 1, 20));
        this.timer = setTimeout(() => this._connect(), delay * (0.5 + Math.random() / 2));
      };
    }

    _receive(socket, data) {
      if (typeof data !== "string") {
        if (!this._takePart(socket, data) && this.onmessage) this.onmessage(data);
        return;
      }
      let msg;
      try {
        msg = JSON.parse(data);
      } catch (err) {
        msg = data;
      }
      if (!isPlainObject(msg)) {
        if (this.onmessage) this.onmessage(msg);
      } else if (has(msg, "status")) {
        if (!this._takeReply(socket, msg) && this.onmessage) this.onmessage(msg);
      } else if (typeof msg.cmd === "string" && has(msg, "callId")) {
        this._answer(socket, msg); // a request: answered on the connection it came on
      } else if (has(msg, "cancel") && !has(msg, "cmd")) {
        const call = socket._syncwsAnswering.get(msg.cancel); // the server gave up on a call: unknown or done ones need nothing
        if (call) {
          socket._syncwsAnswering.delete(msg.cancel);
          call._cancel();
        }
      } else if (has(msg, "callId")) {
        // A request the page cannot take: say so at once rather than leave the caller waiting.
        const problem = has(msg, "cmd") ? "has a cmd that is not a string" : "has no cmd";
        this._sendJSON(socket, { cmd: has(msg, "cmd") ? msg.cmd : null, callId: msg.callId, status: 400, error: "request " + problem });
      } else if (this.onmessage) {
        this.onmessage(msg);
      }
    }

    /* A message with a status: true if it is the reply to a call of the page's (or a late one, dropped). */
    _takeReply(socket, reply) {
      const callId = reply.callId;
      if (!Number.isSafeInteger(callId)) return false;
      const call = this.pending.get(callId);
      if (!call || call.socket !== socket) return this._late(callId);
      if (call.header) {
        this._settle(call, damaged(call, "a reply came in the middle of its parts"));
      } else if (reply.status !== 200) {
        const status = Number.isInteger(reply.status) ? reply.status : 500;
        this._settle(call, new RequestError(status, String(has(reply, "error") ? reply.error : ""), reply));
      } else if (BINARY_TYPES.includes(reply.dataType)) {
        this._startBinary(call, reply);
      } else {
        this._settle(call, reply);
      }
      return true;
    }

    /* True for the callId of a call the page made and no longer waits for: its late reply is dropped silently. */
    _late(callId) {
      return callId >= 1 && callId < this.nextCallId;
    }

    _startBinary(call, header) {
      const size = header.size;
      const parts = header.parts;
      if (!Number.isSafeInteger(size) || !Number.isSafeInteger(parts) || size < 0 || parts < 0 || (parts === 0) !== (size === 0)) {
        this._settle(call, damaged(call, "invalid size " + JSON.stringify(size) + " or parts " + JSON.stringify(parts)));
        return;
      }
      try {
        call.buffer = new Uint8Array(size);
      } catch (err) {
        this._settle(call, damaged(call, "cannot allocate the " + size + " bytes it announces"));
        return;
      }
      call.header = header;
      if (parts === 0) {
        this._finishBinary(call);
        return;
      }
      this._arm(call); // the timeout now bounds the wait for each next part
    }

    /* A binary message: true if it is a part of the reply to a call of the page's (or of a late one, dropped). */
    _takePart(socket, data) {
      const bytes = asBytes(data);
      if (!bytes || bytes.length < PART_HEADER_SIZE || !PART_MAGIC.every((b, i) => bytes[i] === b)) return false;
      const view = new DataView(bytes.buffer, bytes.byteOffset, PART_HEADER_SIZE);
      const bigCallId = view.getBigUint64(4);
      if (bigCallId > BigInt(Number.MAX_SAFE_INTEGER)) return false;
      const callId = Number(bigCallId);
      const call = this.pending.get(callId);
      if (!call || call.socket !== socket) return this._late(callId);
      const index = view.getUint32(12);
      const count = view.getUint32(16);
      const offset = Number(view.getBigUint64(20));
      const checksum = view.getUint32(28);
      const slice = bytes.subarray(PART_HEADER_SIZE);
      const header = call.header;
      if (!header) {
        this._settle(call, damaged(call, "binary part before the reply header"));
        return true;
      }
      if (index !== call.nextPart || count !== header.parts) {
        this._settle(call, damaged(call, "part " + index + "/" + count + " out of order (expected " + call.nextPart + "/" + header.parts + ")"));
        return true;
      }
      const end = offset + slice.length;
      if (offset !== call.received || end > header.size) {
        this._settle(call, damaged(call, "part " + index + " at offset " + offset + " does not follow on (expected " + call.received + ") or runs past " + header.size));
        return true;
      }
      const last = index + 1 === count;
      if (last && end !== header.size) {
        this._settle(call, damaged(call, "parts do not add up to the announced size"));
        return true;
      }
      if (crc32(slice) !== checksum) {
        this._settle(call, damaged(call, "CRC-32 mismatch in part " + index));
        return true;
      }
      call.buffer.set(slice, offset);
      call.received = end;
      call.nextPart += 1;
      if (call.onProgress) {
        try {
          call.onProgress(call.received, header.size);
        } catch (err) {
          console.error("syncws: onProgress of call " + call.callId + " failed", err);
        }
      }
      if (last) this._finishBinary(call);
      else this._arm(call);
      return true;
    }

    _finishBinary(call) {
      const reply = Object.assign({}, call.header, { data: call.buffer.buffer });
      this._settle(call, reply);
    }

    // -------------------------------------------------------------- answering the server's calls

    async _answer(socket, msg) {
      const base = { cmd: msg.cmd, callId: msg.callId };
      const fn = this.commands.get(msg.cmd);
      if (!fn) {
        this._sendJSON(socket, Object.assign(base, { status: 404, error: "unknown command '" + msg.cmd + "'" }));
        return;
      }
      const answering = socket._syncwsAnswering;
      const call = new IncomingCall(msg.cmd, msg.callId);
      answering.set(msg.callId, call);
      let result;
      let failure = null;
      try {
        result = await fn(msg, call);
      } catch (err) {
        failure = err;
      } finally {
        if (answering.get(msg.callId) === call) answering.delete(msg.callId);
      }
      if (call.cancelled) return; // the server gave up on it (or the connection closed): nobody waits for this reply
      if (failure !== null) {
        const name = (failure && failure.name) || "Error";
        this._sendJSON(socket, Object.assign(base, { status: 500, error: name + ": " + ((failure && failure.message) || String(failure)) }));
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

  global.syncws = {
    Peer: Peer,
    crc32: crc32,
    RequestError: RequestError,
    RequestTimeout: RequestTimeout,
    ConnectionClosed: ConnectionClosed,
    NotConnected: NotConnected,
  };
})(typeof window !== "undefined" ? window : globalThis);
