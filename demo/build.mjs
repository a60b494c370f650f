// Bundles the official SDK for the browser: src/platform.js → dist/platform.js (an ES
// module the demo page imports). Run by scripts/build-demo.sh.
//
// The SDK's index also holds its media client, which imports livekit-client (over 1 MB).
// The demo uses none of it; neither package declares `sideEffects`, so esbuild would keep
// livekit's module code. Declaring livekit free of side effects lets esbuild drop it when
// nothing the page imports uses it; a page that did use media would still get it whole.
import * as esbuild from 'esbuild';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('.', import.meta.url));

const livekitHasNoSideEffects = {
  name: 'livekit-has-no-side-effects',
  setup(build) {
    build.onResolve({ filter: /^livekit-client$/ }, async (args) => {
      if (args.pluginData?.again) return undefined;
      const resolved = await build.resolve(args.path, {
        kind: args.kind,
        resolveDir: args.resolveDir,
        pluginData: { again: true },
      });
      return { ...resolved, sideEffects: false };
    });
  },
};

const result = await esbuild.build({
  absWorkingDir: here,
  entryPoints: ['src/platform.js'],
  outfile: 'dist/platform.js',
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: 'es2020',
  // The SDK's server-side request scope imports it lazily inside a try; a browser never
  // gets there.
  external: ['async_hooks'],
  legalComments: 'inline',
  logLevel: 'warning',
  metafile: true,
  plugins: [livekitHasNoSideEffects],
});
const bytes = Object.values(result.metafile.outputs)[0].bytes;
console.log(`build-demo: wrote demo/dist/platform.js (${bytes} bytes)`);
