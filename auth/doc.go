// Package auth holds the pure security primitives of AllSource Guard: roles and
// permissions, password hashing, token minting and verification, and the
// opaque credential formats. It does no I/O (beyond reading randomness from the
// io.Reader it is given) and knows nothing of raft or HTTP, so the state
// machine, the API servers and the edges all make the same decisions from the
// same code.
//
// # Determinism
//
// Nothing here reads a clock (callers pass now), and everything that needs
// randomness takes an io.Reader (nil means crypto/rand.Reader). Salts, ids,
// secrets, keys and hashes are therefore made on an API server before
// proposing and carried in the command. Inside Apply, use only the pure
// helpers: Role methods, ParseAPIKey, KeyHash.Equal, RefreshFamily.Rotate,
// Claims.Validate. The Pepper-keyed functions are deterministic too, but the
// pepper is a server secret that need not enter the state machine: compute
// hashes and verdicts (Pepper.CheckRefresh) on the API server, and let Apply
// compare KeyHash values — e.g. rotate a refresh family only while its Current
// still equals the hash the server checked.
//
// # Formats
//
//	password hash   $argon2id$v=19$m=19456,t=2,p=1$<salt b64 std raw>$<hash b64 std raw>
//	API key         ask_<id: 32 hex>_<secret: 43 base62><CRC-32: 6 base62>    86 chars
//	refresh token   asr_<family: 32 hex>_<secret: 43 base62><CRC-32: 6 base62> 86 chars
//	operator token  aso_<secret: 43 base62><CRC-32: 6 base62>                  53 chars
//	                (or any ValidateOperatorToken string from ALLSOURCE_BOOTSTRAP_TOKEN)
//	recovery code   xxxx-xxxx-xxxx-xxxx (Crockford base32, 80 bits)
//	stored hashes   KeyHash = HMAC-SHA-256(pepper, kind prefix || id || secret), hex in JSON
//	access token    JWS compact, EdDSA (default) or HS256, header {"alg","kid","typ":"JWT"},
//	                claims sub tenant_id role iss aud iat nbf exp jti typ fam
//	JWKS            {"keys":[{"kty":"OKP","crv":"Ed25519","x":…,"kid":…,"alg":"EdDSA","use":"sig"}]}
//	signing key     MarshalBinary: {"v":1,"kid":…,"alg":…,"created":…,"key":<seed|secret b64url>}
//
// # Where each piece runs
//
// Edges: ParseAPIKey + VerifyAPIKeySecret (allocation-free, ~0.5 µs), Verify
// with a KeySet from ParseJWKS (cache verified tokens until exp: Ed25519 costs
// ~60 µs), ClassifyCredential. API servers: Hasher (bounded Argon2id), Mint,
// GenerateSigningKey, New* credential generators, TOTP.Validate,
// Pepper.MatchRecoveryCode. Revocation (jti), tokens_valid_after (compare with
// Claims.IssuedAt), user and tenant status are the callers' checks.
package auth
