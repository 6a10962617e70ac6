// Every error the plugin raises, with its FST_AUTOCERT_* code.
import createError from '@fastify/error'

/*
 * Every error the plugin raises has a stable `code`. Option errors are
 * TypeErrors thrown at register time, so `app.ready()` rejects before the
 * server takes a connection. Messages never carry key material or credentials.
 */

export const FST_AUTOCERT_NO_DOMAINS = createError(
  'FST_AUTOCERT_NO_DOMAINS',
  'options.domains must be a non-empty array of host names, e.g. { domains: [\'example.com\'] } (it may be empty with options.onDemand)',
  500, TypeError)

export const FST_AUTOCERT_INVALID_DOMAIN = createError<[string]>(
  'FST_AUTOCERT_INVALID_DOMAIN',
  'options.domains: %s is not a name a certificate can be ordered for: a host name, a wildcard *.example.com or one IP address (no ports or paths)',
  500, TypeError)

export const FST_AUTOCERT_TOS_NOT_AGREED = createError(
  'FST_AUTOCERT_TOS_NOT_AGREED',
  'options.termsOfServiceAgreed must be true: read the CA\'s terms of service, then set it to accept them',
  500, TypeError)

export const FST_AUTOCERT_INVALID_DIRECTORY_URL = createError<[string]>(
  'FST_AUTOCERT_INVALID_DIRECTORY_URL',
  'options.directoryUrl must be \'production\', \'staging\' or an https:// URL of an ACME directory; got %s',
  500, TypeError)

export const FST_AUTOCERT_INVALID_KEY_TYPE = createError<[string]>(
  'FST_AUTOCERT_INVALID_KEY_TYPE',
  'options.keyType must be \'ecdsa\', \'rsa\' or both ([\'ecdsa\', \'rsa\']); got %s',
  500, TypeError)

export const FST_AUTOCERT_INVALID_STORE = createError(
  'FST_AUTOCERT_INVALID_STORE',
  'options.store must implement get, put, delete, list and lock: pass new AzureBlobStore({...}), new FileStore(dir) or new MemoryStore()',
  500, TypeError)

export const FST_AUTOCERT_INVALID_OPTION = createError<[string, string]>(
  'FST_AUTOCERT_INVALID_OPTION',
  'options.%s %s',
  500, TypeError)

export const FST_AUTOCERT_NOT_REGISTERED = createError(
  'FST_AUTOCERT_NOT_REGISTERED',
  'SNICallback or ALPNCallback was called on a server where fastify-autocert is not registered: register the plugin on the Fastify instance created with https: { SNICallback }')

export const FST_AUTOCERT_NAME_NOT_ALLOWED = createError<[string]>(
  'FST_AUTOCERT_NAME_NOT_ALLOWED',
  'no certificate is managed for %s: add it to options.domains (or let options.onDemand.allow accept it)',
  421)

export const FST_AUTOCERT_NO_CHALLENGE = createError(
  'FST_AUTOCERT_NO_CHALLENGE',
  'an acme-tls/1 connection asked for a name with no pending TLS-ALPN-01 challenge',
  421)

export const FST_AUTOCERT_ORDER_FAILED = createError<[string, string]>(
  'FST_AUTOCERT_ORDER_FAILED',
  'could not obtain a certificate for %s: %s',
  502)

export const FST_AUTOCERT_BACKOFF = createError<[string, string]>(
  'FST_AUTOCERT_BACKOFF',
  'not ordering a certificate for %s before %s: the last attempt failed',
  503)

export const FST_AUTOCERT_RATE_LIMITED = createError<[string, number, string]>(
  'FST_AUTOCERT_RATE_LIMITED',
  'not ordering a certificate for %s: the fleet placed %d orders in the last hour (options.maxOrdersPerHour); next slot at %s',
  503)

export const FST_AUTOCERT_LOCK_LOST = createError<[string]>(
  'FST_AUTOCERT_LOCK_LOST',
  'lost the cluster lock for %s before writing: another instance may take over')

export const FST_AUTOCERT_CORRUPT = createError<[string, string]>(
  'FST_AUTOCERT_CORRUPT',
  'stored data under %s is unusable: %s')

export const FST_AUTOCERT_CLOSED = createError(
  'FST_AUTOCERT_CLOSED',
  'the certificate manager is closed')

export const FST_AUTOCERT_STORE_AUTH = createError<[number, string, string]>(
  'FST_AUTOCERT_STORE_AUTH',
  'AzureBlobStore: store authentication failed: check the credential or its role assignment (%d %s: %s)')

export const FST_AUTOCERT_STORE_CREDENTIAL = createError<[string]>(
  'FST_AUTOCERT_STORE_CREDENTIAL',
  'AzureBlobStore: options.credential.getToken() %s')

export const FST_AUTOCERT_HANDSHAKE_TIMEOUT = createError<[string, number]>(
  'FST_AUTOCERT_HANDSHAKE_TIMEOUT',
  'no certificate for %s within %d ms (options.handshakeTimeout): the handshake gives up, the order goes on in the background',
  503)

export const FST_AUTOCERT_LOCK_TIMEOUT = createError<[string, string, number]>(
  'FST_AUTOCERT_LOCK_TIMEOUT',
  'gave up waiting for the lock %s, held by %s, after %d ms (options.lockTimeout)',
  503)

export const FST_AUTOCERT_CLOCK_SKEW = createError<[number, string]>(
  'FST_AUTOCERT_CLOCK_SKEW',
  'not ordering: this machine\'s clock is %d s off the CA\'s (%s); fix its time (NTP), the fleet\'s order log is not written meanwhile',
  503)

export const FST_AUTOCERT_STORE_FAILED = createError<[string, string]>(
  'FST_AUTOCERT_STORE_FAILED',
  'the certificate store failed to %s: %s',
  503)

export const FST_AUTOCERT_CHALLENGE_BUSY = createError(
  'FST_AUTOCERT_CHALLENGE_BUSY',
  'an acme-tls/1 connection was refused: too many challenge lookups in flight (CHALLENGE_LOOKUP_LIMITS.inFlight)',
  503)

export const FST_AUTOCERT_INVALID_PROFILE = createError<[string, string]>(
  'FST_AUTOCERT_INVALID_PROFILE',
  'options.profile %s is not a profile the CA offers; it offers: %s',
  500, TypeError)

export const FST_AUTOCERT_REVOKE_FAILED = createError<[string, string]>(
  'FST_AUTOCERT_REVOKE_FAILED',
  'could not revoke the certificate of %s: %s',
  502)
