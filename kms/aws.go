package kms

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"
)

// AWSConfig configures the "aws" backend. Region, credentials and endpoint
// come from the standard AWS configuration chain (AWS_REGION,
// AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN, AWS_PROFILE and
// the shared config files, web identity, ECS and EC2 instance roles,
// AWS_ENDPOINT_URL_KMS); the fields below override it.
type AWSConfig struct {
	Region   string
	Endpoint string // explicit endpoint override, e.g. http://127.0.0.1:4599 for local-kms
	Profile  string // shared config profile
	// Static credentials (all three optional; AccessKeyID and
	// SecretAccessKey together replace the chain's credentials).
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string

	// Timeout bounds each KMS operation including its retries (default 10s).
	Timeout time.Duration
	// MaxAttempts per operation (0: default 3; negative: 1, no retries).
	MaxAttempts int

	// AliasPrefix names each version's AWS key with an alias
	// <prefix><key name>/v<N> (default "alias/allsource/"); DisableAliases
	// turns that off.
	AliasPrefix    string
	DisableAliases bool
	// EnableKeyRotation turns on AWS's own automatic rotation of each key
	// it creates (EnableKeyRotation, every RotationPeriodDays days, default
	// 365). That rotation is transparent (same key id); our versions are
	// separate AWS keys either way.
	EnableKeyRotation  bool
	RotationPeriodDays int
	// PendingWindowDays for ScheduleKeyDeletion of a version that was
	// created but lost the record race (7-30, default 7).
	PendingWindowDays int
	// Tags added to every AWS key created.
	Tags map[string]string
}

// AWSProvider is the "aws" backend. Each version of a named key is its own
// symmetric AWS KMS key (KeyVersion.Ref holds its ARN): rotation creates a
// new AWS key, so rotation, rewrap (ReEncrypt from the old version's key to
// the new one) and min_decryption_version (the AWS keys of retired versions
// are disabled) work the same everywhere, including on emulators that do not
// implement RotateKeyOnDemand. Blobs are AWS ciphertext blobs bound to
// Binding.Map() as the encryption context, which CloudTrail records.
// Data keys come from GenerateDataKey (AES_256).
//
// Registry settings ("aws"): region, endpoint, profile, access_key_id,
// secret_access_key, session_token, timeout, max_attempts, alias_prefix,
// disable_aliases, enable_key_rotation, rotation_period_days,
// pending_window_days.
type AWSProvider struct {
	client *awskms.Client
	cfg    AWSConfig
}

func init() {
	RegisterProvider("aws", func(ctx context.Context, settings map[string]string) (Provider, error) {
		s := newSettings("aws", settings)
		cfg := AWSConfig{
			Region: s.str("region"), Endpoint: s.str("endpoint"), Profile: s.str("profile"),
			AccessKeyID: s.str("access_key_id"), SecretAccessKey: s.str("secret_access_key"), SessionToken: s.str("session_token"),
			Timeout: s.duration("timeout"), MaxAttempts: s.integer("max_attempts"),
			AliasPrefix: s.str("alias_prefix"), DisableAliases: s.boolean("disable_aliases"),
			EnableKeyRotation: s.boolean("enable_key_rotation"), RotationPeriodDays: s.integer("rotation_period_days"),
			PendingWindowDays: s.integer("pending_window_days"),
		}
		if err := s.done(); err != nil {
			return nil, err
		}
		return NewAWSProvider(ctx, cfg)
	})
}

// NewAWSProvider loads the AWS configuration chain and returns a provider.
// It does not call KMS.
func NewAWSProvider(ctx context.Context, cfg AWSConfig) (*AWSProvider, error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.AliasPrefix == "" {
		cfg.AliasPrefix = "alias/allsource/"
	}
	if !strings.HasPrefix(cfg.AliasPrefix, "alias/") || strings.HasPrefix(cfg.AliasPrefix, "alias/aws/") {
		return nil, fmt.Errorf("%w: aws alias prefix must start with alias/ (and not alias/aws/)", ErrInvalidArgument)
	}
	if cfg.PendingWindowDays == 0 {
		cfg.PendingWindowDays = 7
	}
	if cfg.PendingWindowDays < 7 || cfg.PendingWindowDays > 30 {
		return nil, fmt.Errorf("%w: aws pending window must be 7-30 days", ErrInvalidArgument)
	}
	if cfg.RotationPeriodDays != 0 && (cfg.RotationPeriodDays < 90 || cfg.RotationPeriodDays > 2560) {
		return nil, fmt.Errorf("%w: aws rotation period must be 90-2560 days", ErrInvalidArgument)
	}
	var opts []func(*config.LoadOptions) error
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	if cfg.Profile != "" {
		opts = append(opts, config.WithSharedConfigProfile(cfg.Profile))
	}
	if cfg.AccessKeyID != "" || cfg.SecretAccessKey != "" {
		if cfg.AccessKeyID == "" || cfg.SecretAccessKey == "" {
			return nil, fmt.Errorf("%w: aws static credentials need both an access key id and a secret access key", ErrInvalidArgument)
		}
		opts = append(opts, config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(cfg.AccessKeyID, cfg.SecretAccessKey, cfg.SessionToken)))
	}
	switch {
	case cfg.MaxAttempts > 0:
		opts = append(opts, config.WithRetryMaxAttempts(cfg.MaxAttempts))
	case cfg.MaxAttempts < 0:
		opts = append(opts, config.WithRetryMaxAttempts(1))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("%w: aws configuration: %v", ErrInvalidArgument, err)
	}
	if awsCfg.Region == "" {
		return nil, fmt.Errorf("%w: aws region not set (AWSConfig.Region, AWS_REGION or the profile)", ErrInvalidArgument)
	}
	client := awskms.NewFromConfig(awsCfg, func(o *awskms.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
	})
	return &AWSProvider{client: client, cfg: cfg}, nil
}

// Name implements Provider.
func (p *AWSProvider) Name() string { return "aws" }

func (p *AWSProvider) op(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, p.cfg.Timeout)
}

// CreateVersion implements Provider: a new symmetric AWS key per version
// (or, for version 1 with BackendRef, an existing one: key id, ARN or alias).
func (p *AWSProvider) CreateVersion(ctx context.Context, rec *KeyRecord, version int, opts KeyOptions) (KeyVersion, error) {
	octx, cancel := p.op(ctx)
	defer cancel()
	if version == 1 && opts.BackendRef != "" {
		out, err := p.client.DescribeKey(octx, &awskms.DescribeKeyInput{KeyId: aws.String(opts.BackendRef)})
		if err != nil {
			return KeyVersion{}, p.mapErr(ctx, "describe key", opts.BackendRef, err)
		}
		m := out.KeyMetadata
		if m.KeyUsage != types.KeyUsageTypeEncryptDecrypt || m.KeySpec != types.KeySpecSymmetricDefault || !m.Enabled {
			return KeyVersion{}, fmt.Errorf("%w: aws key %q must be an enabled SYMMETRIC_DEFAULT ENCRYPT_DECRYPT key", ErrInvalidArgument, opts.BackendRef)
		}
		return KeyVersion{Version: 1, Ref: aws.ToString(m.Arn)}, nil
	}
	tags := []types.Tag{
		{TagKey: aws.String("allsource:key"), TagValue: aws.String(rec.Name)},
		{TagKey: aws.String("allsource:version"), TagValue: aws.String(strconv.Itoa(version))},
	}
	for k, v := range p.cfg.Tags {
		tags = append(tags, types.Tag{TagKey: aws.String(k), TagValue: aws.String(v)})
	}
	out, err := p.client.CreateKey(octx, &awskms.CreateKeyInput{
		Description: aws.String(fmt.Sprintf("AllSource Guard key %s version %d", rec.Name, version)),
		KeySpec:     types.KeySpecSymmetricDefault,
		KeyUsage:    types.KeyUsageTypeEncryptDecrypt,
		Tags:        tags,
	})
	if err != nil {
		return KeyVersion{}, p.mapErr(ctx, "create key", rec.Name, err)
	}
	kv := KeyVersion{Version: version, Ref: aws.ToString(out.KeyMetadata.Arn)}
	if !p.cfg.DisableAliases {
		alias := p.alias(rec.Name, version)
		_, err := p.client.CreateAlias(octx, &awskms.CreateAliasInput{AliasName: aws.String(alias), TargetKeyId: aws.String(kv.Ref)})
		var exists *types.AlreadyExistsException
		if errors.As(err, &exists) { // left by an attempt whose record was never stored
			_, err = p.client.UpdateAlias(octx, &awskms.UpdateAliasInput{AliasName: aws.String(alias), TargetKeyId: aws.String(kv.Ref)})
		}
		if err != nil {
			p.scheduleDeletion(ctx, kv.Ref)
			return KeyVersion{}, p.mapErr(ctx, "create alias", alias, err)
		}
	}
	if p.cfg.EnableKeyRotation {
		in := &awskms.EnableKeyRotationInput{KeyId: aws.String(kv.Ref)}
		if p.cfg.RotationPeriodDays > 0 {
			in.RotationPeriodInDays = aws.Int32(int32(p.cfg.RotationPeriodDays))
		}
		if _, err := p.client.EnableKeyRotation(octx, in); err != nil {
			p.scheduleDeletion(ctx, kv.Ref)
			return KeyVersion{}, p.mapErr(ctx, "enable key rotation", rec.Name, err)
		}
	}
	return kv, nil
}

func (p *AWSProvider) alias(name string, version int) string {
	return p.cfg.AliasPrefix + name + "/v" + strconv.Itoa(version)
}

func (p *AWSProvider) scheduleDeletion(ctx context.Context, arn string) error {
	octx, cancel := p.op(ctx)
	defer cancel()
	_, err := p.client.ScheduleKeyDeletion(octx, &awskms.ScheduleKeyDeletionInput{KeyId: aws.String(arn), PendingWindowInDays: aws.Int32(int32(p.cfg.PendingWindowDays))})
	if err != nil {
		return p.mapErr(ctx, "schedule key deletion", arn, err)
	}
	return nil
}

// DiscardVersion implements Provider: deletes the alias and schedules the
// AWS key's deletion.
func (p *AWSProvider) DiscardVersion(ctx context.Context, rec *KeyRecord, v KeyVersion) error {
	if !p.cfg.DisableAliases {
		octx, cancel := p.op(ctx)
		// The alias may already point at the winner's key: only delete ours.
		out, err := p.client.DescribeKey(octx, &awskms.DescribeKeyInput{KeyId: aws.String(p.alias(rec.Name, v.Version))})
		if err == nil && aws.ToString(out.KeyMetadata.Arn) == v.Ref {
			p.client.DeleteAlias(octx, &awskms.DeleteAliasInput{AliasName: aws.String(p.alias(rec.Name, v.Version))})
		}
		cancel()
	}
	return p.scheduleDeletion(ctx, v.Ref)
}

// Encrypt implements Provider.
func (p *AWSProvider) Encrypt(ctx context.Context, rec *KeyRecord, v KeyVersion, plaintext []byte, b Binding) ([]byte, error) {
	if len(plaintext) == 0 || len(plaintext) > MaxSecretSize {
		return nil, fmt.Errorf("%w: aws encrypts 1-%d bytes", ErrInvalidArgument, MaxSecretSize)
	}
	octx, cancel := p.op(ctx)
	defer cancel()
	out, err := p.client.Encrypt(octx, &awskms.EncryptInput{KeyId: aws.String(v.Ref), Plaintext: plaintext, EncryptionContext: b.Map()})
	if err != nil {
		return nil, p.mapErr(ctx, "encrypt", rec.Name, err)
	}
	return out.CiphertextBlob, nil
}

// Decrypt implements Provider. The blob names its AWS key; we let AWS read
// it from there and then check that it is the key of version v, so a blob
// of another key (or one whose key reference was altered) is refused.
func (p *AWSProvider) Decrypt(ctx context.Context, rec *KeyRecord, v KeyVersion, wrapped []byte, b Binding) ([]byte, error) {
	octx, cancel := p.op(ctx)
	defer cancel()
	out, err := p.client.Decrypt(octx, &awskms.DecryptInput{CiphertextBlob: wrapped, EncryptionContext: b.Map()})
	if err != nil {
		return nil, p.decryptErr(ctx, rec, v, "decrypt", err)
	}
	if aws.ToString(out.KeyId) != v.Ref {
		clear(out.Plaintext)
		return nil, fmt.Errorf("%w: key %q version %d: blob was made by another AWS key", ErrDecrypt, rec.Name, v.Version)
	}
	return out.Plaintext, nil
}

// GenerateDataKey implements Provider (GenerateDataKey, AES_256).
func (p *AWSProvider) GenerateDataKey(ctx context.Context, rec *KeyRecord, v KeyVersion, b Binding) ([]byte, []byte, error) {
	octx, cancel := p.op(ctx)
	defer cancel()
	out, err := p.client.GenerateDataKey(octx, &awskms.GenerateDataKeyInput{KeyId: aws.String(v.Ref), KeySpec: types.DataKeySpecAes256, EncryptionContext: b.Map()})
	if err != nil {
		return nil, nil, p.mapErr(ctx, "generate data key", rec.Name, err)
	}
	if len(out.Plaintext) != dataKeySize {
		clear(out.Plaintext)
		return nil, nil, fmt.Errorf("aws: GenerateDataKey answered %d bytes, want %d", len(out.Plaintext), dataKeySize)
	}
	return out.Plaintext, out.CiphertextBlob, nil
}

// Rewrap implements Provider (ReEncrypt; the plaintext stays inside KMS).
func (p *AWSProvider) Rewrap(ctx context.Context, rec *KeyRecord, from, to KeyVersion, wrapped []byte, b Binding) ([]byte, error) {
	octx, cancel := p.op(ctx)
	defer cancel()
	ctxMap := b.Map()
	out, err := p.client.ReEncrypt(octx, &awskms.ReEncryptInput{
		CiphertextBlob: wrapped, DestinationKeyId: aws.String(to.Ref),
		SourceEncryptionContext: ctxMap, DestinationEncryptionContext: ctxMap,
	})
	if err != nil {
		return nil, p.decryptErr(ctx, rec, from, "re-encrypt", err)
	}
	if aws.ToString(out.SourceKeyId) != from.Ref {
		return nil, fmt.Errorf("%w: key %q version %d: blob was made by another AWS key", ErrDecrypt, rec.Name, from.Version)
	}
	return out.CiphertextBlob, nil
}

// ApplyPolicy implements Provider: disables the AWS keys of versions below
// MinDecryptionVersion and enables the others (so lowering it works too).
func (p *AWSProvider) ApplyPolicy(ctx context.Context, rec *KeyRecord) error {
	for _, v := range rec.Versions {
		octx, cancel := p.op(ctx)
		var err error
		if v.Version < rec.MinDecryptionVersion {
			_, err = p.client.DisableKey(octx, &awskms.DisableKeyInput{KeyId: aws.String(v.Ref)})
		} else {
			_, err = p.client.EnableKey(octx, &awskms.EnableKeyInput{KeyId: aws.String(v.Ref)})
		}
		cancel()
		if err != nil {
			return p.mapErr(ctx, "apply policy", rec.Name, err)
		}
	}
	return nil
}

// Close implements Provider.
func (p *AWSProvider) Close() error { return nil }

// decryptErr maps a Decrypt or ReEncrypt failure. AWS answers AccessDenied
// (or NotFound) when the blob names a key that does not exist or that we may
// not use, which is also what an altered key reference looks like; the key
// of version v is then described to tell a retired (disabled) version from
// a bad ciphertext.
func (p *AWSProvider) decryptErr(ctx context.Context, rec *KeyRecord, v KeyVersion, op string, err error) error {
	var ae smithy.APIError
	if !errors.As(err, &ae) {
		return p.mapErr(ctx, op, rec.Name, err)
	}
	switch ae.ErrorCode() {
	case "InvalidCiphertextException", "IncorrectKeyException":
		return fmt.Errorf("%w: key %q version %d: aws %s: %s", ErrDecrypt, rec.Name, v.Version, op, ae.ErrorCode())
	case "DisabledException", "KMSInvalidStateException":
		return fmt.Errorf("%w: key %q version %d: the AWS key is disabled or pending deletion (%s)", ErrVersionRetired, rec.Name, v.Version, ae.ErrorCode())
	case "AccessDeniedException", "NotFoundException":
		octx, cancel := p.op(ctx)
		defer cancel()
		out, derr := p.client.DescribeKey(octx, &awskms.DescribeKeyInput{KeyId: aws.String(v.Ref)})
		if derr != nil {
			return p.mapErr(ctx, op, rec.Name, derr)
		}
		if !out.KeyMetadata.Enabled {
			return fmt.Errorf("%w: key %q version %d: the AWS key is disabled (%s)", ErrVersionRetired, rec.Name, v.Version, out.KeyMetadata.KeyState)
		}
		return fmt.Errorf("%w: key %q version %d: the blob names a key that does not exist or may not be used (aws %s)", ErrDecrypt, rec.Name, v.Version, ae.ErrorCode())
	}
	return p.mapErr(ctx, op, rec.Name, err)
}

// mapErr maps AWS errors to sentinels. Only error codes are kept: AWS
// validation messages can echo request values.
func (p *AWSProvider) mapErr(ctx context.Context, op, key string, err error) error {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		code := ae.ErrorCode()
		switch code {
		case "NotFoundException":
			return fmt.Errorf("%w: aws %s %q: %s", ErrKeyNotFound, op, key, code)
		case "AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException", "ExpiredTokenException":
			return fmt.Errorf("%w: aws %s %q: %s", ErrPermissionDenied, op, key, code)
		case "DisabledException", "KMSInvalidStateException":
			return fmt.Errorf("%w: aws %s %q: the AWS key is disabled or pending deletion (%s)", ErrVersionRetired, op, key, code)
		case "InvalidCiphertextException", "IncorrectKeyException":
			return fmt.Errorf("%w: aws %s %q: %s", ErrDecrypt, op, key, code)
		case "KMSInternalException", "DependencyTimeoutException", "ThrottlingException", "KeyUnavailableException",
			"LimitExceededException", "InternalFailureException", "ServiceUnavailableException":
			return fmt.Errorf("%w: aws %s %q: %s", ErrUnavailable, op, key, code)
		case "ValidationException", "InvalidKeyUsageException", "UnsupportedOperationException", "InvalidArnException", "InvalidAliasNameException":
			return fmt.Errorf("%w: aws %s %q: %s", ErrInvalidArgument, op, key, code)
		}
		return fmt.Errorf("aws %s %q: %s", op, key, code)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("aws %s %q: %w", op, key, ctx.Err())
	}
	// Connection refused, DNS, TLS, our per-operation timeout, exhausted retries.
	return fmt.Errorf("%w: aws %s %q: %v", ErrUnavailable, op, key, err)
}

// Check implements Checker: one ListKeys call (limit 1) with our credentials.
func (p *AWSProvider) Check(ctx context.Context) error {
	octx, cancel := p.op(ctx)
	defer cancel()
	if _, err := p.client.ListKeys(octx, &awskms.ListKeysInput{Limit: aws.Int32(1)}); err != nil {
		return p.mapErr(ctx, "check", "", err)
	}
	return nil
}
