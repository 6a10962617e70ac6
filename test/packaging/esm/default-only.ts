// ESM forms beyond usage.ts: a namespace import is the module object (the plugin, from CommonJS).
import * as pkg from 'fastify-autocert'
import autocert from 'fastify-autocert'

export const plugin: typeof autocert = pkg.default
export const sni: typeof autocert.SNICallback = pkg.SNICallback
