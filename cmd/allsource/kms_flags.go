package main

import (
	"flag"

	"github.com/allsource/guard/internal/server"
)

// kmsFlags are the settings of the KMS service (README.md, KMS and encryption).
func kmsFlags(fs *flag.FlagSet, c *server.Config) {
	k := &c.KMS
	fs.StringVar(&c.KMSLocalKeyFile, "kms-root-key-file", "", "local KMS root key file (made by 'allsource kms init-local'): 32 bytes, base64, mode 0600 or stricter; "+
		"every server needs the same key (default: ALLSOURCE_KMS_ROOT_KEY, else derived from the join token; in dev mode <data-dir>/kms-root.key)")
	fs.StringVar(&k.Backend, "kms-backend", "local", "default backend of new KMS keys: local, vault, aws, or pkcs11 (pkcs11 only in a binary built with -tags pkcs11)")
	fs.StringVar(&k.VaultAddress, "kms-vault-addr", "", "Vault address (default VAULT_ADDR)")
	fs.StringVar(&k.VaultToken, "kms-vault-token", "", "Vault token (prefer -kms-vault-token-file; default VAULT_TOKEN)")
	fs.StringVar(&k.VaultTokenFile, "kms-vault-token-file", "", "file holding the Vault token")
	fs.StringVar(&k.VaultNamespace, "kms-vault-namespace", "", "Vault Enterprise namespace (default VAULT_NAMESPACE)")
	fs.StringVar(&k.VaultMount, "kms-vault-mount", "", "mount path of the transit engine (default transit)")
	fs.StringVar(&k.VaultKeyPrefix, "kms-vault-key-prefix", "", "prefix of the transit key names this cluster makes")
	fs.StringVar(&k.VaultCACert, "kms-vault-ca-cert", "", "PEM CA of Vault's certificate (default VAULT_CACERT)")
	fs.StringVar(&k.VaultClientCert, "kms-vault-client-cert", "", "PEM client certificate for Vault mTLS")
	fs.StringVar(&k.VaultClientKey, "kms-vault-client-key", "", "PEM client key for Vault mTLS")
	fs.StringVar(&k.VaultTLSServerName, "kms-vault-tls-server-name", "", "SNI name of Vault's certificate")
	fs.BoolVar(&k.VaultTLSSkipVerify, "kms-vault-tls-skip-verify", false, "do not verify Vault's certificate (development only)")
	fs.DurationVar(&k.VaultTimeout, "kms-vault-timeout", 0, "bound of each Vault request including retries (default 10s)")
	fs.StringVar(&k.AWSRegion, "kms-aws-region", "", "AWS region (default: the standard chain, AWS_REGION / profile)")
	fs.StringVar(&k.AWSEndpoint, "kms-aws-endpoint", "", "AWS KMS endpoint URL (a VPC endpoint, or local-kms in tests)")
	fs.StringVar(&k.AWSProfile, "kms-aws-profile", "", "shared-config profile (default AWS_PROFILE)")
	fs.StringVar(&k.AWSAliasPrefix, "kms-aws-alias-prefix", "", "alias prefix of the AWS keys this cluster makes (default alias/allsource/)")
	fs.DurationVar(&k.AWSTimeout, "kms-aws-timeout", 0, "bound of each AWS KMS call (default 10s)")
	fs.StringVar(&k.PKCS11Library, "kms-pkcs11-library", "", "PKCS#11 module (default /usr/lib/softhsm/libsofthsm2.so)")
	fs.StringVar(&k.PKCS11TokenLabel, "kms-pkcs11-token-label", "", "label of the PKCS#11 token")
	fs.StringVar(&k.PKCS11PINFile, "kms-pkcs11-pin-file", "", "file holding the PKCS#11 user PIN")
	fs.DurationVar(&k.RotationCheck, "kms-rotation-check", 0, "how often the leader rotates keys whose rotation_period elapsed (default 1m)")
	fs.DurationVar(&k.CheckEvery, "kms-check-interval", 0, "how often a remote KMS backend's reachability is checked (default 30s)")
}
