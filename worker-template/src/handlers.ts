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

import {
  InteractionResponseType,
  InteractionType,
  type GatewayMessageCreateDispatchData,
} from "discord-api-types/v10";
import { requestGuildMembers, type CommandResult, type ControlEnv } from "./commands";
import { Handlers } from "./delivery";
import { discord, type DiscordEnv } from "./discord";

export function exampleHandlers<Env extends DiscordEnv & ControlEnv>(): Handlers<Env> {
  return new Handlers<Env>()
    .on("READY", (ready, ctx) => {
      console.log(
        `shard ${ctx.shardId}/${ctx.shardCount} ready as ${ready.user.username} ` +
          `in session ${ctx.sessionId} with ${ready.guilds.length} guilds`,
      );
    })
    .on("MESSAGE_CREATE", async (message, ctx) => {
      if (message.author.bot) return;
      if (message.content === "!ping") {
        // Awaited, not deferred: if Discord refuses, the batch fails and the router retries it.
        await discord(ctx.env, "POST", `/channels/${message.channel_id}/messages`, {
          content: "pong",
        });
      } else if (message.content === "!members" && message.guild_id) {
        await membersCommand(message, message.guild_id, ctx.env);
      }
    })
    .on("GUILD_MEMBERS_CHUNK", (chunk, ctx) => {
      // The answer to `!members`' op 8, in chunks of up to 1000 members, on the guild's shard.
      console.log(
        `guild ${chunk.guild_id}: members chunk ${chunk.chunk_index + 1}/${chunk.chunk_count} ` +
          `with ${chunk.members.length} member${chunk.members.length === 1 ? "" : "s"} on shard ${ctx.shardId}` +
          (chunk.nonce ? ` (request ${chunk.nonce})` : ""),
      );
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

/**
 * `!members`: asks the router to send op 8 (request guild members) on the shard holding the
 * message's guild, and says in the channel whether it was queued. The members arrive later as
 * GUILD_MEMBERS_CHUNK events (the bot needs the privileged GUILD_MEMBERS intent for them). The
 * request's nonce is the message id, so the chunks can be matched to it.
 */
async function membersCommand(
  message: GatewayMessageCreateDispatchData,
  guildId: string,
  env: DiscordEnv & ControlEnv,
): Promise<void> {
  let content: string;
  if (!env.SHARDHOOK_CONTROL_URL) {
    content = "I cannot send gateway commands: SHARDHOOK_CONTROL_URL is not set.";
  } else {
    // Reaching the router is awaited: if it is down, the batch fails and is retried.
    const result = await requestGuildMembers(env, {
      guild_id: guildId,
      query: "",
      limit: 0,
      nonce: message.id,
    });
    content = membersReply(result);
  }
  await discord(env, "POST", `/channels/${message.channel_id}/messages`, { content });
}

function membersReply(result: CommandResult): string {
  switch (result.kind) {
    case "queued":
      return `Asked Discord for this server's members on shard ${result.shards.join(", ")}; they arrive as GUILD_MEMBERS_CHUNK events.`;
    case "rate_limited":
      return `The gateway is busy; try \`!members\` again in ${result.retryAfter} s.`;
    case "refused":
      return `The router refused the request (${result.status}): ${result.error}`;
  }
}
