package main

import (
	"flag"

	"github.com/allsource/guard/internal/server"
)

// identityFlags are the settings of passwords, tokens, lockout, the audit
// batcher and the KMS root key (0 or empty: the default).
func identityFlags(fs *flag.FlagSet, c *server.Config) {
	id := &c.Identity
	fs.StringVar(&c.KMSLocalKeyFile, "kms-local-key-file", "", "the same as -kms-root-key-file (older name)")
	fs.StringVar(&id.TokenAlg, "token-alg", "EdDSA", "access-token signature: EdDSA (Ed25519, default) or HS256")
	fs.StringVar(&id.HS256SecretFile, "token-hs256-secret-file", "", "HS256 secret (at least 32 bytes) for -token-alg HS256; default: a random secret per key version")
	fs.DurationVar(&id.TokenTTL, "token-ttl", 0, "access-token lifetime (default 24h)")
	fs.DurationVar(&id.RefreshTTL, "refresh-ttl", 0, "refresh-token lifetime (default 720h)")
	fs.StringVar(&id.Issuer, "token-issuer", "", "iss of access tokens (default allsource-guard)")
	fs.StringVar(&id.Audience, "token-audience", "", "aud of access tokens (default allsource-guard)")
	fs.UintVar(&id.ArgonMemoryKiB, "argon2-memory", 0, "Argon2id memory in KiB for new password hashes (default 19456)")
	fs.UintVar(&id.ArgonTime, "argon2-time", 0, "Argon2id passes for new password hashes (default 2)")
	fs.UintVar(&id.ArgonThreads, "argon2-threads", 0, "Argon2id parallelism for new password hashes (default 1)")
	fs.IntVar(&id.MaxHashes, "max-concurrent-hashes", 0, "password hashes computed at once; more logins queue (default GOMAXPROCS)")
	fs.IntVar(&id.LockoutFailures, "lockout-failures", 0, "failed logins that lock an account (default 5)")
	fs.DurationVar(&id.LockoutWindow, "lockout-window", 0, "window of -lockout-failures, and how long the lock lasts (default 15m)")
	fs.IntVar(&id.AuditBatch, "audit-batch", 0, "audit entries per group-commit batch (default 500, at most 10000)")
	fs.DurationVar(&id.AuditFlush, "audit-flush", 0, "longest an audit entry waits for its batch (default 20ms)")
}
