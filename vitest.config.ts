// `npm test` runs both handler templates' tests: the Worker's inside workerd, the Lambda's in
// Node.
import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    projects: ["worker-template/vitest.config.ts", "lambda-template/vitest.config.ts"],
  },
});
