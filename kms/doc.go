// Package kms is AllSource Guard's key management: named keys with
// versions held by pluggable backends, envelope and field-level encryption
// with a bounded data-key cache, and rotation without downtime. It imports
// nothing else from this repository.
//
// # Pieces
//
//   - Provider: one backend. Built in: "local" (NewLocalProvider; version
//     keys wrapped by a root key and kept in the replicated records),
//     "vault" (NewVaultProvider; HashiCorp Vault transit), "aws"
//     (NewAWSProvider; AWS KMS), and "pkcs11" (NewPKCS11Provider; an HSM,
//     only with -tags pkcs11, needs cgo). OpenProvider builds one by name
//     from string settings; RegisterProvider is the extension point for
//     further backends (GCP Cloud KMS, Azure Key Vault).
//   - KeyStore: where key records live. The server implements it over the
//     raft state machine (see the KeyStore doc for the compare-and-set it
//     must do); MemKeyStore is the in-memory one.
//   - Keyring: key lifecycle over a KeyStore and the configured providers:
//     CreateKey, RotateKey, SetMinDecryptionVersion, SetRotationPeriod,
//     RotateDue (scheduled rotation; DueForRotation is the pure function).
//   - Encryptor: EncryptField / DecryptField / Rewrap / GenerateDataKey /
//     EncryptSecret and the batch variants, bound to a Context{Tenant, Field}.
//
// # Wiring (server)
//
//	p, _ := kms.OpenProvider(ctx, "local", map[string]string{"root_key_file": path})
//	kr, _ := kms.NewKeyring(kms.KeyringConfig{Store: fsmKeyStore, Providers: []kms.Provider{p}})
//	enc := kms.NewEncryptor(kr, kms.EncryptorConfig{})
//	// leader, on a timer:  kr.RotateDue(ctx, time.Now())
//	// POST /v1/kms/keys                 kr.CreateKey(ctx, name, kms.KeyOptions{Backend, RotationPeriod})
//	// POST /v1/kms/keys/{name}/rotate   kr.RotateKey(ctx, name)
//	// POST /v1/kms/encrypt              enc.EncryptField(ctx, key, plaintext, c) → kms.EncodeText(ct)
//	// POST /v1/kms/decrypt              enc.DecryptField(ctx, key, []byte(text), c)
//	// POST /v1/kms/rewrap               enc.Rewrap(ctx, key, []byte(text), c)
//	// POST /v1/kms/datakey              enc.GenerateDataKey(ctx, key, c)
//
// Every KMS call happens outside Apply: the Keyring builds a complete
// KeyRecord (material, references, timestamps) and the state machine only
// compares revisions and stores it.
//
// # Errors
//
// Failures wrap the sentinels in errors.go (ErrKeyNotFound, ErrKeyExists,
// ErrConflict, ErrDecrypt, ErrMalformedCiphertext, ErrVersionRetired,
// ErrKeyMismatch, ErrUnavailable, ErrPermissionDenied, ErrInvalidArgument,
// ErrUnknownBackend); test with errors.Is. No message contains plaintext,
// data keys or key material.
//
// # Formats
//
// The ciphertext layout is documented next to ParseCiphertext (format.go)
// and, with the key record encoding and the design choices, in DESIGN.md in
// this directory.
package kms
