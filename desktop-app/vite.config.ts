import { defineConfig } from "vitest/config";

export default defineConfig({
  clearScreen: false,
  build: { outDir: "dist", emptyOutDir: true },
  test: { environment: "jsdom", include: ["tests/**/*.test.ts"] },
});
