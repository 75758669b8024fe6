// A Carbon app, as its users write one: `@buape/carbon` from npm (package-lock.json pins it),
// a Client with a MESSAGE_CREATE listener, its fetch handler served by Node's http module.
// tests/carbon.rs points shardhook's `format = "carbon"` endpoint at its `/events` route.
//
// Carbon does all the verifying (X-Signature-Ed25519 over X-Signature-Timestamp + body against
// CARBON_PUBLIC_KEY) and the parsing; this file only serves it and reports, one JSON object a
// line on stdout:
//   {"listening": "http://127.0.0.1:PORT"}       once, when it accepts requests;
//   {"request": {...}}                             per POST /events: Carbon's status, headers, body;
//   {"message": {...}}                             per MESSAGE_CREATE a listener of the app saw.
//
// Its event queue takes one MESSAGE_CREATE at a time and holds one more, and its first listener
// call waits until Carbon has refused an event with 429 ("Event queue full, retry later"), so
// every run shows how the router takes Carbon's back-pressure.
//
// Environment: CARBON_PUBLIC_KEY (hex), CARBON_CLIENT_ID, DISCORD_TOKEN.

import http from "node:http";
import { Client, MessageCreateListener } from "@buape/carbon";
import { createHandler } from "@buape/carbon/adapters/fetch";

function report(line) {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

let refused;
const queueFull = new Promise((resolve) => {
  refused = resolve;
});
let first = true;

class Messages extends MessageCreateListener {
  async handle(data) {
    if (first) {
      first = false;
      await queueFull;
    }
    report({
      message: {
        id: data.message.id,
        channel_id: data.rawMessage.channel_id,
        guild_id: data.rawMessage.guild_id,
        content: data.rawMessage.content,
        nonce: data.rawMessage.nonce,
        author_id: data.author.id,
        client_id: data.clientId,
      },
    });
  }
}

const client = new Client(
  {
    baseUrl: "http://127.0.0.1",
    clientId: process.env.CARBON_CLIENT_ID,
    publicKey: process.env.CARBON_PUBLIC_KEY,
    token: process.env.DISCORD_TOKEN,
    disableDeployRoute: true,
    eventQueue: { lanes: { standard: { maxQueueSize: 1, maxConcurrency: 1 } } },
  },
  { listeners: [new Messages()] },
);
const handle = createHandler(client);

const server = http.createServer(async (req, res) => {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const body = Buffer.concat(chunks);
  const headers = new Headers();
  for (const [name, value] of Object.entries(req.headers)) {
    headers.set(name, Array.isArray(value) ? value.join(", ") : value);
  }
  const request = new Request(`http://127.0.0.1${req.url}`, {
    method: req.method,
    headers,
    body: req.method === "GET" || req.method === "HEAD" ? undefined : body,
  });
  const response = await handle(request, {});
  const answer = Buffer.from(await response.arrayBuffer());
  if (req.url === "/events") {
    report({
      request: {
        status: response.status,
        timestamp: req.headers["x-signature-timestamp"] ?? null,
        signature: req.headers["x-signature-ed25519"] ?? null,
        event_id: req.headers["x-carbon-forwarder-event-id"] ?? null,
        attempt: req.headers["x-carbon-forwarder-attempt"] ?? null,
        body: body.toString("utf8"),
      },
    });
  }
  if (response.status === 429) refused();
  res.writeHead(response.status, Object.fromEntries(response.headers));
  res.end(answer);
});

server.listen(0, "127.0.0.1", () => {
  report({ listening: `http://127.0.0.1:${server.address().port}` });
});

process.stdin.resume();
// The test closes stdin to stop the app (and kills it if it is gone itself).
process.stdin.on("end", () => process.exit(0));
