// Builds the console into crates/console/assets/: index.html, app.js and app.css, fixed names,
// no source maps, nothing else. The Rust binary embeds these files; CI rebuilds and diffs them,
// so the output must be byte-for-byte reproducible.
import { fileURLToPath } from 'node:url'

const outDir = fileURLToPath(new URL('../crates/console/assets/', import.meta.url))

export default {
  // `npm run dev`: the console from source, its /api proxied to a running control plane's
  // admin_gui_listen (GANTRY_CONSOLE, default http://127.0.0.1:8002). The dev server injects
  // styles inline, so only the built files meet the server's CSP.
  server: {
    proxy: { '/api': process.env.GANTRY_CONSOLE || 'http://127.0.0.1:8002' },
  },
  // The server serves the two files under /assets/.
  base: '/assets/',
  publicDir: false,
  esbuild: { jsx: 'automatic', jsxImportSource: 'preact', legalComments: 'none' },
  build: {
    outDir,
    emptyOutDir: true,
    assetsDir: '',
    sourcemap: false,
    modulePreload: false,
    cssCodeSplit: false,
    // Everything (there are no images or fonts) goes into app.js / app.css.
    assetsInlineLimit: 1 << 20,
    reportCompressedSize: true,
    target: 'es2020',
    rollupOptions: {
      output: {
        entryFileNames: 'app.js',
        chunkFileNames: 'app-[name].js',
        assetFileNames: 'app[extname]',
        inlineDynamicImports: true,
      },
    },
  },
}
