package kms

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"go/build"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
)

// The aws backend is tested for real against the local-kms emulator
// (go install github.com/nsmithuk/local-kms@v0.0.0-20260228092603-2a5e92d09ab6,
// which scripts/ci-kms-deps.sh does). One emulator process serves every test
// of the package run; it is started on a free port on first use and stopped
// when the tests end.
const localKMSInstall = "go install github.com/nsmithuk/local-kms@v0.0.0-20260228092603-2a5e92d09ab6"

var localKMS struct {
	once     sync.Once
	endpoint string
	err      error
	missing  bool
}

func localKMSBinary() (string, bool) {
	if p, err := exec.LookPath("local-kms"); err == nil {
		return p, true
	}
	for _, gp := range filepath.SplitList(build.Default.GOPATH) {
		p := filepath.Join(gp, "bin", "local-kms")
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, true
		}
	}
	return "", false
}

// localKMSEndpoint returns the emulator's endpoint, starting it if needed.
// Without the binary the test fails under CI=true and is skipped otherwise.
func localKMSEndpoint(t testing.TB) string {
	t.Helper()
	localKMS.once.Do(func() {
		bin, ok := localKMSBinary()
		if !ok {
			localKMS.missing = true
			return
		}
		localKMS.endpoint, localKMS.err = startLocalKMS(bin)
	})
	if localKMS.missing {
		if os.Getenv("CI") == "true" {
			t.Fatalf("local-kms not found on PATH or in $(go env GOPATH)/bin; install it with: %s (scripts/ci-kms-deps.sh)", localKMSInstall)
		}
		t.Skipf("local-kms not installed; to run the aws backend tests: %s", localKMSInstall)
	}
	if localKMS.err != nil {
		t.Fatalf("starting local-kms: %v", localKMS.err)
	}
	return localKMS.endpoint
}

var localKMSPort = regexp.MustCompile(`Local KMS started on [^ ]*:(\d+)`)

func startLocalKMS(bin string) (string, error) {
	dir, err := os.MkdirTemp("", "local-kms-test-")
	if err != nil {
		return "", err
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(),
		"PORT=0", // the emulator picks a free port and logs it
		"KMS_REGION=eu-west-2",
		"KMS_ACCOUNT_ID=111122223333",
		"KMS_DATA_PATH="+filepath.Join(dir, "data"),
		"KMS_SEED_PATH="+filepath.Join(dir, "no-seed.yaml"),
	)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", err
	}
	cmd.Stderr = cmd.Stdout
	dieWithTest(cmd)
	if err := cmd.Start(); err != nil {
		return "", err
	}
	atExit(func() {
		cmd.Process.Kill()
		cmd.Wait()
		os.RemoveAll(dir)
	})
	portc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if m := localKMSPort.FindStringSubmatch(sc.Text()); m != nil {
				portc <- m[1]
				break
			}
		}
		io.Copy(io.Discard, out) // keep draining the emulator's log
	}()
	var port string
	select {
	case port = <-portc:
	case <-time.After(30 * time.Second):
		return "", errors.New("local-kms did not report its port within 30s")
	}
	addr := net.JoinHostPort("127.0.0.1", port)
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("local-kms on %s does not accept connections: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	endpoint := "http://" + addr
	// Wait until it answers an API call, not just accepts connections.
	p, err := NewAWSProvider(context.Background(), localKMSConfig(endpoint))
	if err != nil {
		return "", err
	}
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := p.client.ListKeys(ctx, &awskms.ListKeysInput{})
		cancel()
		if err == nil {
			return endpoint, nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("local-kms on %s does not answer: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func localKMSConfig(endpoint string) AWSConfig {
	return AWSConfig{
		Region: "eu-west-2", Endpoint: endpoint,
		AccessKeyID: "AKIDLOCALKMSTEST", SecretAccessKey: "local-kms-ignores-the-secret",
		Timeout: 10 * time.Second,
	}
}

func newTestAWS(t testing.TB, mod func(*AWSConfig)) *AWSProvider {
	t.Helper()
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true") // never look for instance credentials
	cfg := localKMSConfig(localKMSEndpoint(t))
	if mod != nil {
		mod(&cfg)
	}
	p, err := NewAWSProvider(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConformanceAWS(t *testing.T) {
	runConformance(t, func(t *testing.T) conformanceBackend {
		return conformanceBackend{Provider: newTestAWS(t, nil), EnforcesPolicy: true}
	})
}

func describe(t *testing.T, p *AWSProvider, id string) *types.KeyMetadata {
	t.Helper()
	out, err := p.client.DescribeKey(context.Background(), &awskms.DescribeKeyInput{KeyId: aws.String(id)})
	if err != nil {
		t.Fatalf("DescribeKey %s: %v", id, err)
	}
	return out.KeyMetadata
}

func TestAWSVersionsAreAWSKeys(t *testing.T) {
	ctx := context.Background()
	p := newTestAWS(t, func(c *AWSConfig) { c.EnableKeyRotation = true })
	kr, err := NewKeyring(KeyringConfig{Store: NewMemKeyStore(), Providers: []Provider{p}})
	if err != nil {
		t.Fatal(err)
	}
	name := uniqueKeyName("aws")
	if _, err := kr.CreateKey(ctx, name, KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	rec, err := kr.RotateKey(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	v1, v2 := rec.Versions[0].Ref, rec.Versions[1].Ref
	if v1 == v2 || !strings.HasPrefix(v1, "arn:aws:kms:eu-west-2:111122223333:key/") {
		t.Fatalf("version refs %q %q", v1, v2)
	}
	if got := aws.ToString(describe(t, p, "alias/allsource/"+name+"/v2").Arn); got != v2 {
		t.Fatalf("alias of v2 points at %s", got)
	}
	rot, err := p.client.GetKeyRotationStatus(ctx, &awskms.GetKeyRotationStatusInput{KeyId: aws.String(v2)})
	if err != nil || !rot.KeyRotationEnabled {
		t.Fatalf("AWS rotation not enabled: %v", err)
	}
	if _, err := kr.SetMinDecryptionVersion(ctx, name, 2); err != nil {
		t.Fatal(err)
	}
	if describe(t, p, v1).Enabled || !describe(t, p, v2).Enabled {
		t.Fatal("retiring version 1 did not disable its AWS key (only)")
	}
	if _, err := kr.SetMinDecryptionVersion(ctx, name, 1); err != nil {
		t.Fatal(err)
	}
	if !describe(t, p, v1).Enabled {
		t.Fatal("reinstating version 1 did not enable its AWS key")
	}
}

func TestAWSAdoptExistingKey(t *testing.T) {
	ctx := context.Background()
	p := newTestAWS(t, nil)
	out, err := p.client.CreateKey(ctx, &awskms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	alias := "alias/" + uniqueKeyName("preexisting")
	if _, err := p.client.CreateAlias(ctx, &awskms.CreateAliasInput{AliasName: aws.String(alias), TargetKeyId: out.KeyMetadata.KeyId}); err != nil {
		t.Fatal(err)
	}
	kr, _ := NewKeyring(KeyringConfig{Store: NewMemKeyStore(), Providers: []Provider{p}})
	enc := NewEncryptor(kr, EncryptorConfig{})
	name := uniqueKeyName("adopt")
	rec, err := kr.CreateKey(ctx, name, KeyOptions{BackendRef: alias})
	if err != nil {
		t.Fatal(err)
	}
	if rec.Versions[0].Ref != aws.ToString(out.KeyMetadata.Arn) {
		t.Fatalf("adopted ref %q", rec.Versions[0].Ref)
	}
	ct, err := enc.EncryptField(ctx, name, []byte("x"), Context{Tenant: "t"})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := enc.DecryptField(ctx, name, ct, Context{Tenant: "t"}); err != nil || string(got) != "x" {
		t.Fatal(err)
	}
	if _, err := kr.CreateKey(ctx, uniqueKeyName("ghost"), KeyOptions{BackendRef: "alias/does-not-exist"}); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("missing key adopted: %v", err)
	}
}

// conflictStore fails the next PutKey with ErrConflict, as when another
// server's change wins the raft race.
type conflictStore struct {
	KeyStore
	fail bool
}

func (s *conflictStore) PutKey(ctx context.Context, rec *KeyRecord) error {
	if s.fail {
		s.fail = false
		return fmt.Errorf("%w: injected", ErrConflict)
	}
	return s.KeyStore.PutKey(ctx, rec)
}

func TestAWSLostRaceDiscardsTheNewKey(t *testing.T) {
	ctx := context.Background()
	p := newTestAWS(t, nil)
	store := &conflictStore{KeyStore: NewMemKeyStore()}
	kr, _ := NewKeyring(KeyringConfig{Store: store, Providers: []Provider{p}})
	name := uniqueKeyName("race")
	if _, err := kr.CreateKey(ctx, name, KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	store.fail = true
	if _, err := kr.RotateKey(ctx, name); !errors.Is(err, ErrConflict) {
		t.Fatalf("rotate with a lost race: %v", err)
	}
	// The orphan AWS key made for version 2 is scheduled for deletion.
	if out, err := p.client.DescribeKey(ctx, &awskms.DescribeKeyInput{KeyId: aws.String("alias/allsource/" + name + "/v2")}); err == nil {
		t.Fatalf("alias of the discarded version still points at %s", aws.ToString(out.KeyMetadata.Arn))
	}
	// (DescribeKey does resolve our aliases: version 1's is there.)
	describe(t, p, "alias/allsource/"+name+"/v1")
	list, err := p.client.ListKeys(ctx, &awskms.ListKeysInput{})
	if err != nil {
		t.Fatal(err)
	}
	pending := 0
	for _, k := range list.Keys {
		m := describe(t, p, aws.ToString(k.KeyArn))
		if m.KeyState == types.KeyStatePendingDeletion && strings.Contains(aws.ToString(m.Description), " "+name+" version 2") {
			pending++
		}
	}
	if pending != 1 {
		t.Fatalf("%d AWS keys of the lost version pending deletion, want 1", pending)
	}
	// The next rotation works and reuses the version number.
	if rec, err := kr.RotateKey(ctx, name); err != nil || rec.LatestVersion() != 2 {
		t.Fatalf("rotate after the race: %v", err)
	}
}

func TestAWSRegistrySettings(t *testing.T) {
	endpoint := localKMSEndpoint(t)
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	ctx := context.Background()
	p, err := OpenProvider(ctx, "aws", map[string]string{
		"region": "eu-west-2", "endpoint": endpoint, "access_key_id": "AKIDX", "secret_access_key": "x",
		"timeout": "5s", "max_attempts": "2", "alias_prefix": "alias/reg/", "pending_window_days": "7",
	})
	if err != nil {
		t.Fatal(err)
	}
	kr, _ := NewKeyring(KeyringConfig{Store: NewMemKeyStore(), Providers: []Provider{p}})
	name := uniqueKeyName("reg")
	if _, err := kr.CreateKey(ctx, name, KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	describe(t, p.(*AWSProvider), "alias/reg/"+name+"/v1")
	for _, bad := range []map[string]string{
		{"region": "eu-west-2", "alias_prefix": "allsource/"},
		{"region": "eu-west-2", "pending_window_days": "3"},
		{"region": "eu-west-2", "access_key_id": "only-half"},
		{"region": "eu-west-2", "regoin": "x"},
	} {
		if _, err := OpenProvider(ctx, "aws", bad); !errors.Is(err, ErrInvalidArgument) {
			t.Fatalf("settings %v: %v", bad, err)
		}
	}
}

// Backend unreachable → ErrUnavailable, fast. (No emulator needed.)
func TestAWSUnavailable(t *testing.T) {
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	endpoint := "http://" + ln.Addr().String()
	ln.Close()
	cfg := localKMSConfig(endpoint)
	cfg.Timeout, cfg.MaxAttempts = time.Second, 2
	p, err := NewAWSProvider(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	kr, _ := NewKeyring(KeyringConfig{Store: NewMemKeyStore(), Providers: []Provider{p}})
	start := time.Now()
	_, err = kr.CreateKey(context.Background(), "k", KeyOptions{})
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("closed port: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("took %s", d)
	}
	// Data operations on a stored key fail the same way.
	rec := &KeyRecord{Name: "k", Backend: "aws", Versions: []KeyVersion{{Version: 1, Ref: "arn:aws:kms:eu-west-2:111122223333:key/00000000-0000-0000-0000-000000000000"}}, MinDecryptionVersion: 1, Revision: 1}
	if _, _, err := p.GenerateDataKey(context.Background(), rec, rec.Versions[0], Binding{Key: "k"}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("GenerateDataKey: %v", err)
	}
}
