package kms

import "errors"

// Sentinel errors. Every error returned by this package that falls into one of
// these classes wraps the sentinel, so callers (the HTTP layer maps them to
// status codes) test with errors.Is. Messages name keys, versions, backends
// and lengths, never plaintext, data keys or key material.
var (
	// ErrKeyNotFound: the named key, or the requested version of it, does
	// not exist (in the key store or in the backend).
	ErrKeyNotFound = errors.New("kms: key not found")

	// ErrKeyExists: CreateKey for a name that is already taken.
	ErrKeyExists = errors.New("kms: key already exists")

	// ErrConflict: a concurrent writer changed the key record first (the
	// KeyStore's compare-and-set on Revision failed). Re-read and retry.
	ErrConflict = errors.New("kms: key record changed concurrently")

	// ErrDecrypt: authentication failed. The ciphertext was tampered with,
	// belongs to another tenant, field or key, or the key material does not
	// match. Deliberately uninformative.
	ErrDecrypt = errors.New("kms: decryption failed")

	// ErrMalformedCiphertext: the input is not a ciphertext of a format this
	// package understands (wrong prefix, magic or format version, truncated,
	// lengths out of range).
	ErrMalformedCiphertext = errors.New("kms: malformed ciphertext")

	// ErrVersionRetired: the ciphertext was made with a key version below the
	// key's min_decryption_version.
	ErrVersionRetired = errors.New("kms: key version retired")

	// ErrKeyMismatch: the caller named a key, and the ciphertext says it was
	// made with another one.
	ErrKeyMismatch = errors.New("kms: ciphertext belongs to another key")

	// ErrUnavailable: the backend could not be reached or did not answer in
	// time (connection refused, timeout, 5xx after retries, throttling).
	// Retrying later may succeed.
	ErrUnavailable = errors.New("kms: backend unavailable")

	// ErrPermissionDenied: the backend refused our credentials (Vault 403,
	// AWS AccessDenied, PKCS#11 PIN or key usage not permitted).
	ErrPermissionDenied = errors.New("kms: permission denied by backend")

	// ErrInvalidArgument: a bad key name, option, context or size.
	ErrInvalidArgument = errors.New("kms: invalid argument")

	// ErrUnknownBackend: no provider is registered or configured under that name.
	ErrUnknownBackend = errors.New("kms: unknown backend")
)
