/*! gengate feedback snippet: thumbs, scores and copy events on the answers a page shows. No dependencies.
 *
 *   <script src="https://gateway.example/v1/feedback.js"></script>
 *   <script>
 *     gengate.feedback.init({endpoint: "https://gateway.example/v1/feedback", token: () => getAccessToken()});
 *     gengate.feedback.thumbs("chatcmpl-…", true, "optional comment");    // a Promise of the stored result
 *   </script>
 *   <div data-gengate-response="chatcmpl-…">…the answer…</div>             // copying from it sends `copy`
 *
 * Events are queued, sent in batches (up to 20 at once, or after `delayMs`), and retried on network errors,
 * 401, 429 and 5xx with the same event ids, so a retry is never counted twice. Sent when the page is hidden too.
 */
(function (root) {
  "use strict";
  var MAX_BATCH = 20;
  var state = null;

  function uuid() {
    var c = root.crypto;
    if (c && typeof c.randomUUID === "function") return c.randomUUID();
    var b = new Uint8Array(16);
    if (c && typeof c.getRandomValues === "function") c.getRandomValues(b);
    else for (var i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    var h = "";
    for (var j = 0; j < 16; j++) h += (b[j] + 0x100).toString(16).slice(1);
    return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" + h.slice(16, 20) + "-" + h.slice(20);
  }

  function marked(node) {
    for (; node; node = node.parentNode) {
      if (node.nodeType === 1 && node.hasAttribute && node.hasAttribute("data-gengate-response")) return node;
    }
    return null;
  }

  function onCopy(event) {
    var doc = root.document;
    var selection = doc && doc.getSelection ? doc.getSelection() : null;
    var element = marked(selection && selection.anchorNode) || marked(event && event.target);
    if (element) send({response_id: element.getAttribute("data-gengate-response"), kind: "copy"});
  }

  function schedule(wait) {
    if (!state || state.timer !== null || state.sending) return;
    state.timer = setTimeout(function () {
      state.timer = null;
      drain(false);
    }, wait);
  }

  function retryable(status) {
    return status === 401 || status === 408 || status === 429 || status >= 500;
  }

  function later(items, seconds) {
    var wait = 0;
    items.forEach(function (item) {
      item.attempts += 1;
      if (item.attempts >= state.maxAttempts) {
        item.reject(new Error("gengate feedback: giving up on event " + item.event.event_id));
        return;
      }
      state.queue.push(item);
      wait = Math.max(wait, seconds ? seconds * 1000 : Math.min(30000, state.retryMs * Math.pow(2, item.attempts - 1)));
    });
    return wait;
  }

  function settle(items, body) {
    var results = body && Array.isArray(body.data) ? body.data : [];
    var retry = [];
    items.forEach(function (item, index) {
      var result = results[index];
      if (!result) retry.push(item);
      else if (result.status === 200) item.resolve(result);
      else if (retryable(result.status)) retry.push(item);
      else item.reject(Object.assign(new Error((result.error && result.error.message) || "rejected"), result));
    });
    return retry;
  }

  function post(items, keepalive) {
    return new Promise(function (resolve) {
      resolve(typeof state.token === "function" ? state.token() : state.token);
    })
      .then(function (token) {
        return root.fetch(state.endpoint, {
          method: "POST",
          keepalive: !!keepalive,
          headers: {"content-type": "application/json", authorization: "Bearer " + token},
          body: JSON.stringify({events: items.map(function (item) { return item.event; })}),
        });
      })
      .then(function (response) {
        return response.text().then(function (text) {
          var body = null;
          try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
          if (response.status === 200) return later(settle(items, body), 0);
          var seconds = Number(response.headers.get("retry-after")) || 0;
          if (retryable(response.status)) return later(items, seconds);
          var error = (body && body.error) || {message: "HTTP " + response.status};
          items.forEach(function (item) {
            item.reject(Object.assign(new Error(error.message), {status: response.status, error: error}));
          });
          return 0;
        });
      }, function () {
        return later(items, 0);  // network error: the server may have stored them; the same ids make it safe
      });
  }

  function drain(keepalive) {
    if (!state || state.sending || !state.queue.length) return Promise.resolve();
    state.sending = true;
    var items = state.queue.splice(0, MAX_BATCH);
    return post(items, keepalive)
      .catch(function () { return later(items, 0); })
      .then(function (wait) {
        state.sending = false;
        if (state.queue.length) schedule(wait || (state.queue.length >= MAX_BATCH ? 0 : state.delayMs));
        state.idle.slice().forEach(function (check) { check(); });
      });
  }

  function send(event) {
    if (!state) return Promise.reject(new Error("gengate.feedback.init() has not been called"));
    event.event_id = uuid();
    return new Promise(function (resolve, reject) {
      state.queue.push({event: event, resolve: resolve, reject: reject, attempts: 0});
      schedule(state.queue.length >= MAX_BATCH ? 0 : state.delayMs);
    });
  }

  function flush() {
    if (!state) return Promise.resolve();
    return new Promise(function (resolve) {
      function check() {
        if (!state.queue.length && !state.sending) {
          state.idle.splice(state.idle.indexOf(check), 1);
          resolve();
        } else if (!state.sending && state.timer === null) {
          drain(false);
        }
      }
      state.idle.push(check);
      if (state.timer !== null) {
        clearTimeout(state.timer);
        state.timer = null;
      }
      drain(false);
      check();
    });
  }

  function init(options) {
    if (!options || !options.endpoint || !options.token) throw new Error("gengate.feedback.init needs endpoint and token");
    var first = state === null;
    state = {
      endpoint: options.endpoint,
      token: options.token,
      delayMs: options.delayMs == null ? 1000 : options.delayMs,
      retryMs: options.retryMs == null ? 500 : options.retryMs,
      maxAttempts: options.maxAttempts || 8,
      queue: state ? state.queue : [],
      timer: null,
      sending: false,
      idle: [],
    };
    var doc = root.document;
    if (first && doc && doc.addEventListener) {
      doc.addEventListener("copy", onCopy);
      doc.addEventListener("visibilitychange", function () {
        if (doc.visibilityState === "hidden") drain(true);
      });
    }
    if (first && typeof root.addEventListener === "function") {
      root.addEventListener("pagehide", function () { drain(true); });
    }
  }

  function thumbs(responseId, up, comment) {
    var event = {response_id: responseId, kind: "thumbs", value: up ? "up" : "down"};
    if (comment) event.comment = comment;
    return send(event);
  }

  function score(responseId, value, comment) {
    var event = {response_id: responseId, kind: "score", value: value};
    if (comment) event.comment = comment;
    return send(event);
  }

  function implicit(kind) {
    return function (responseId) { return send({response_id: responseId, kind: kind}); };
  }

  root.gengate = root.gengate || {};
  root.gengate.feedback = {
    init: init,
    thumbs: thumbs,
    score: score,
    copy: implicit("copy"),
    regenerate: implicit("regenerate"),
    share: implicit("share"),
    flush: flush,
  };
})(typeof window !== "undefined" ? window : globalThis);
