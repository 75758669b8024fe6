// The Lambda template's tests run in Node 20, as the Lambda runtime does.
import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    name: "lambda",
    root: __dirname,
    include: ["test/**/*.test.ts"],
    environment: "node",
  },
});
