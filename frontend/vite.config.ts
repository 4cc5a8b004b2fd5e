/// <reference types="vitest/config" />
import { defineConfig, type Plugin } from 'vite';
import react from '@vitejs/plugin-react';
import tailwindcss from '@tailwindcss/vite';
import { copyFileSync, mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

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

// The API's interactive docs page (/api/v1/schema/swagger) loads Swagger UI from the server itself, not
// from a CDN: machines running crewflow may have no internet access. The files are copied from the npm
// package into dist/api-docs/ at build time; the Python server serves them.
const SWAGGER_FILES = ['swagger-ui-bundle.js', 'swagger-ui-standalone-preset.js', 'swagger-ui.css'];
const swaggerAssets: Plugin = {
  name: 'crewflow-swagger-assets',
  apply: 'build',
  closeBundle() {
    const source = resolve(here, 'node_modules', 'swagger-ui-dist');
    const target = resolve(here, 'dist', 'api-docs');
    mkdirSync(target, { recursive: true });
    for (const file of SWAGGER_FILES) copyFileSync(join(source, file), join(target, file));
  },
};

export default defineConfig({
  plugins: [react(), tailwindcss(), previewCsp, swaggerAssets],
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
