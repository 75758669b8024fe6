// Runs the Worker's tests inside workerd, with the root wrangler.toml and test secrets: the
// fixture's current key, its previous key (rotation), a token for the mocked Discord, and the
// mocked router's control API.
import { defineWorkersConfig } from "@cloudflare/vitest-pool-workers/config";
import fixture from "./test/fixtures/shardhook-request.json";

export default defineWorkersConfig({
  test: {
    name: "worker",
    root: __dirname,
    include: ["test/**/*.test.ts"],
    // discord-api-types' .mjs re-exports its CommonJS build, which workerd cannot load
    // unbundled; Vite's optimizer bundles it as wrangler's esbuild does.
    deps: { optimizer: { ssr: { enabled: true, include: ["discord-api-types/v10"] } } },
    poolOptions: {
      workers: {
        singleWorker: true,
        wrangler: { configPath: "../wrangler.toml" },
        miniflare: {
          bindings: {
            SHARDHOOK_SIGNING_SECRET: fixture.secret,
            SHARDHOOK_PREVIOUS_SIGNING_SECRETS: fixture.previous_secret,
            DISCORD_TOKEN: "test-bot-token",
            DISCORD_API_URL: "https://discord.test/api/v10",
            SHARDHOOK_CONTROL_URL: "https://router.test/",
          },
        },
      },
    },
  },
});
