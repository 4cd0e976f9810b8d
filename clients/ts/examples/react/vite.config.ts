// The dev server (`npm run dev`) and the preview of the built page
// (`npm run preview`) both proxy /ws (WebSocket) and /symbols to the engine at
// TICKWIRE_URL (default http://127.0.0.1:8080, `tickwire demo`'s address), so
// the page talks to ws(s)://<page host>/ws and never needs CORS.
// JSX goes through Vite's built-in esbuild: no React plugin needed.
import { defineConfig } from "vite";

const target = (process.env.TICKWIRE_URL || "http://127.0.0.1:8080").replace(/\/+$/, "");
const proxy = {
  "/ws": { target, ws: true, changeOrigin: true },
  "/symbols": { target, changeOrigin: true },
};

export default defineConfig({
  esbuild: { jsx: "automatic" },
  server: { proxy },
  preview: { proxy },
});
