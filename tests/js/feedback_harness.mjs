// Runs the browser snippet (as served by the gateway) in Node against a real gateway, and prints what happened.
//
//   node feedback_harness.mjs <gateway-url> <key> <own-response-id> <other-own-response-id> <foreign-response-id>
//
// A minimal stand-in DOM holds one answer element; the network "loses" the answer to the first request (the
// gateway has stored the events, the page never hears so), so the snippet must retry with the same event ids.
import vm from "node:vm";

const [base, key, own, other, foreign] = process.argv.slice(2);
const out = {attempts: [], results: {}};

const script = await fetch(`${base}/v1/feedback.js`);
out.status = script.status;
out.contentType = script.headers.get("content-type");
out.cacheControl = script.headers.get("cache-control");
const code = await script.text();

const listeners = {};
const answer = {
  nodeType: 1,
  parentNode: null,
  hasAttribute: (name) => name === "data-gengate-response",
  getAttribute: (name) => (name === "data-gengate-response" ? own : null),
};
const text = {nodeType: 3, parentNode: answer};
globalThis.document = {
  visibilityState: "visible",
  addEventListener: (type, listener) => {
    (listeners[type] ||= []).push(listener);
  },
  getSelection: () => ({anchorNode: text}),
};

const realFetch = globalThis.fetch;
globalThis.fetch = async (url, init) => {
  out.attempts.push(JSON.parse(init.body).events.map((event) => event.event_id));
  const response = await realFetch(url, init);
  if (out.attempts.length === 1) {
    await response.text();
    throw new TypeError("network connection lost");
  }
  return response;
};

vm.runInThisContext(code, {filename: "feedback.js"});
const feedback = globalThis.gengate.feedback;
feedback.init({endpoint: `${base}/v1/feedback`, token: async () => key, delayMs: 5, retryMs: 10});
const up = feedback.thumbs(own, true, "Exactly what I needed");
const down = feedback.thumbs(other, false);
for (const listener of listeners.copy) listener({target: answer});
const stranger = feedback.thumbs(foreign, true).then(() => "stored", (error) => error.status);
await feedback.flush();
out.results.up = await up;
out.results.down = await down;
out.results.foreign = await stranger;
console.log(JSON.stringify(out));
