// Sends messages through shardhook's REST proxy with two bot libraries' own REST clients,
// configured only as their documentation says (no signing of ours), and prints what came
// back as one JSON line: {"sent": N, "failed": [...]}.
//
// Environment: PROXY_API (the proxy's base, e.g. http://127.0.0.1:8080/api), REST_SECRET,
// CHANNELS (comma-separated ids), PER_LIBRARY (messages each library sends).
import { REST } from '@discordjs/rest';
import { createRestManager } from '@discordeno/rest';

const { PROXY_API, REST_SECRET, CHANNELS, PER_LIBRARY } = process.env;
const channels = CHANNELS.split(',');
const count = Number(PER_LIBRARY);

// @discordjs/rest: `api` is the proxy, the token its secret (sent as `Bot <secret>`).
const discordjs = new REST({ api: PROXY_API }).setToken(REST_SECRET);

// @discordeno/rest: `proxy.baseUrl` and `proxy.authorization` (sent as `Authorization:
// <secret>`). Its `token` only names the application here (its first segment, base64 of the
// bot's id); the proxy holds the real one.
const applicationId = '1100000000000000001';
const discordeno = createRestManager({
  token: `${Buffer.from(applicationId).toString('base64')}.not.the-token`,
  proxy: { baseUrl: PROXY_API, authorization: REST_SECRET },
});

const sends = [];
for (let i = 0; i < count; i++) {
  const channel = channels[i % channels.length];
  sends.push(
    discordjs.post(`/channels/${channel}/messages`, { body: { content: `discord.js ${i}` } }),
  );
  sends.push(discordeno.sendMessage(channel, { content: `discordeno ${i}` }));
}
const results = await Promise.allSettled(sends);
const failed = results
  .filter((r) => r.status === 'rejected')
  .map((r) => String(r.reason?.message ?? r.reason));
console.log(JSON.stringify({ sent: results.length - failed.length, failed }));
process.exit(0);
