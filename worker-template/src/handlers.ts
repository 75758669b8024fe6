// The example handlers a bot starts from: replace them with your own. Each gets the event's
// `d`, typed by discord-api-types, and an `EventContext` (env, shard, session, seq).
//
// Delivery is at least once, so a handler may see an event twice (a retried batch, or a
// RESUME replay): key side effects on (ctx.shardId, ctx.sessionId, ctx.seq), or on
// ctx.webhookId for the whole batch, and skip keys already recorded. The examples below do not,
// so a retried `!ping` can be answered twice.
//
// Await what must be done before the event counts as handled: a handler that throws answers
// 500 and the router retries the batch. Hand slower work whose loss you accept (analytics,
// a follow-up message) to `ctx.waitUntil(promise)`: it runs after the answer on Workers and
// before it on Lambda, and is never retried.

import { InteractionResponseType, InteractionType } from "discord-api-types/v10";
import { Handlers } from "./delivery";
import { discord, type DiscordEnv } from "./discord";

export function exampleHandlers<Env extends DiscordEnv>(): Handlers<Env> {
  return new Handlers<Env>()
    .on("READY", (ready, ctx) => {
      console.log(
        `shard ${ctx.shardId}/${ctx.shardCount} ready as ${ready.user.username} ` +
          `in session ${ctx.sessionId} with ${ready.guilds.length} guilds`,
      );
    })
    .on("MESSAGE_CREATE", async (message, ctx) => {
      if (message.author.bot || message.content !== "!ping") return;
      // Awaited, not deferred: if Discord refuses, the batch fails and the router retries it.
      await discord(ctx.env, "POST", `/channels/${message.channel_id}/messages`, {
        content: "pong",
      });
    })
    .on("INTERACTION_CREATE", async (interaction, ctx) => {
      // Discord wants the callback within 3 s; the router never lingers on interactions.
      if (interaction.type !== InteractionType.ApplicationCommand) return;
      const content = `Hello from shard ${ctx.shardId}: you ran /${interaction.data.name}.`;
      if (ctx.deferred) {
        // The router acknowledged it already (`interactions.auto_defer`): fill in the answer.
        await discord(
          ctx.env,
          "PATCH",
          `/webhooks/${interaction.application_id}/${interaction.token}/messages/@original`,
          { content },
          { auth: false },
        );
        return;
      }
      await discord(
        ctx.env,
        "POST",
        `/interactions/${interaction.id}/${interaction.token}/callback`,
        { type: InteractionResponseType.ChannelMessageWithSource, data: { content } },
        { auth: false },
      );
    });
}
