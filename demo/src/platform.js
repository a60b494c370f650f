// The entry point of the browser bundle (dist/platform.js): the parts of the official
// SDK the demo page uses, re-exported so esbuild keeps only what they need.
export { RealtimeClient, RenClient, renFetch } from '@maravilla-labs/platform';
