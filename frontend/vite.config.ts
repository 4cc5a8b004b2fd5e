/// <reference types="vitest/config" />
import { defineConfig, type Plugin } from 'vite';
import react from '@vitejs/plugin-react';
import tailwindcss from '@tailwindcss/vite';

// `npm run dev` serves the SPA and proxies the API (HTTP and the execution WebSocket) to a local
// `crewflow serve`. Override the target with CREWFLOW_API=http://127.0.0.1:8123.
const api = process.env.CREWFLOW_API ?? 'http://127.0.0.1:8000';

// `vite preview` (used by the e2e test while the API server does not serve dist/) sends the same
// Content-Security-Policy as the server sends with the app (src/crewflow/entrypoints/http/limits.py), so a
// violation shows up in the browser test.
const CSP_APP =
  "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; " +
  "connect-src 'self' ws: wss:; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'";
const previewCsp: Plugin = {
  name: 'crewflow-preview-csp',
  configurePreviewServer(server) {
    server.middlewares.use((_req, res, next) => {
      res.setHeader('Content-Security-Policy', CSP_APP);
      next();
    });
  },
};

export default defineConfig({
  plugins: [react(), tailwindcss(), previewCsp],
  base: '/',
  server: {
    proxy: {
      '/api': { target: api, changeOrigin: false, ws: true },
    },
  },
  preview: { proxy: { '/api': { target: api, changeOrigin: false, ws: true } } },
  build: { outDir: 'dist', emptyOutDir: true, sourcemap: false, chunkSizeWarningLimit: 1500 },
  test: { include: ['src/**/*.test.ts'], environment: 'node' },
});
