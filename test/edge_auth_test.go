package test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/allsource/guard/cluster"
	"github.com/allsource/guard/internal/edge"
)

// TestEdgeEndpointsNeedTheJoinToken: the edge endpoints of a server answer
// 401 and nothing else to a caller without the join token, or with a wrong
// one; with it the stream opens.
func TestEdgeEndpointsNeedTheJoinToken(t *testing.T) {
	if testing.Short() {
		t.Skip("system test: skipped with -short")
	}
	c := newInprocCluster(t)
	n := c.add("s1")
	c.start(n)
	operatorToken(t, n)
	c.leader(t)
	hc := &http.Client{Timeout: 5 * time.Second}
	for _, path := range []string{"/v1/watch?since=0", "/v1/watch/servers", "/v1/internal/audit"} {
		for _, tok := range []string{"", "wrong-join-token-0123456789"} {
			method := http.MethodGet
			if strings.HasPrefix(path, "/v1/internal") {
				method = http.MethodPost
			}
			req, _ := http.NewRequest(method, "http://"+n.addr()+path, strings.NewReader(`{"edge":"x"}`))
			if tok != "" {
				req.Header.Set("X-Allsource-Join-Token", tok)
			}
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if err != nil {
				t.Fatalf("%s %s with token %q: reading the answer: %v", method, path, tok, err)
			}
			body := string(b)
			if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(body, `"unauthenticated"`) ||
				strings.Contains(body, "snapshot") || strings.Contains(body, "hello") {
				t.Fatalf("%s %s with token %q: %d %s", method, path, tok, resp.StatusCode, body)
			}
		}
	}
	req, _ := http.NewRequest(http.MethodGet, "http://"+n.addr()+"/v1/watch/servers", nil)
	req.Header.Set("X-Allsource-Join-Token", testJoinToken)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("with the join token: %d", resp.StatusCode)
	}
}

// TestEdgeMTLS: with mTLS configured, an edge holding a certificate from the
// cluster's CA and the join token streams the view over HTTPS; one with the
// token but no certificate is refused.
func TestEdgeMTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("system test: skipped with -short")
	}
	dir := t.TempDir()
	tlsFiles := writeTestPKI(t, dir)
	c := newInprocCluster(t)
	n := c.add("s1")
	n.cfg.TLS = tlsFiles
	shareRootKey(t, n)
	c.start(n)
	tok := operatorToken(t, n)
	c.leader(t)
	up := echoUpstream(t)
	good := newEdgeNode(t, c, "tls-edge", up.URL, func(cfg *edge.Config) { cfg.TLS = tlsFiles })
	waitFor(t, 20*time.Second, "the mTLS edge to load the view", func() bool { return good.edge().Pipeline().View() != nil })

	// The identity API is HTTPS here; make a key with a TLS client.
	cert, _ := tls.LoadX509KeyPair(tlsFiles.CertFile, tlsFiles.KeyFile)
	pool := x509.NewCertPool()
	caPEM, _ := os.ReadFile(tlsFiles.CAFile)
	pool.AppendCertsFromPEM(caPEM)
	tc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS13}}}
	do := func(method, path, body string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(method, "https://"+n.addr()+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("Content-Type", "application/json")
		var resp *http.Response
		waitFor(t, 20*time.Second, method+" "+path, func() bool {
			var err error
			resp, err = tc.Do(req)
			if err == nil && resp.StatusCode == http.StatusServiceUnavailable {
				resp.Body.Close()
				req, _ = http.NewRequest(method, "https://"+n.addr()+path, strings.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+tok)
				req.Header.Set("Content-Type", "application/json")
				return false
			}
			return err == nil
		})
		return resp
	}
	if r := do("POST", "/v1/tenants", `{"id":"tls"}`); r.StatusCode != http.StatusCreated {
		t.Fatalf("create tenant over mTLS: %d", r.StatusCode)
	}
	r := do("POST", "/v1/tenants/tls/api-keys", `{"name":"k","role":"readonly"}`)
	var key struct{ Key string }
	if err := jsonDecode(r, &key); err != nil || key.Key == "" {
		t.Fatalf("create key: %d %v", r.StatusCode, err)
	}
	waitFor(t, 20*time.Second, "the mTLS edge to admit the key", func() bool {
		return send(t, "GET", "http://"+good.addr()+"/x", "X-API-Key", key.Key).Status == http.StatusOK
	})

	// The join token without a client certificate is not enough.
	noCert := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	req, _ := http.NewRequest(http.MethodGet, "https://"+n.addr()+"/v1/watch?since=0", nil)
	req.Header.Set("X-Allsource-Join-Token", testJoinToken)
	resp, err := noCert.Do(req)
	if err != nil {
		t.Fatalf("a client without a certificate: %v (want a 401 answer)", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a client without a certificate got %d, want 401", resp.StatusCode)
	}
}

func jsonDecode(r *http.Response, v any) error {
	defer r.Body.Close()
	return json.NewDecoder(r.Body).Decode(v)
}

// writeTestPKI writes a CA and one certificate (server and client use,
// SAN 127.0.0.1 and localhost) signed by it, as cluster.TLSFiles.
func writeTestPKI(t *testing.T, dir string) cluster.TLSFiles {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "allsource test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "node"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	files := cluster.TLSFiles{CertFile: filepath.Join(dir, "node.pem"), KeyFile: filepath.Join(dir, "node.key"), CAFile: filepath.Join(dir, "ca.pem")}
	for path, blk := range map[string]*pem.Block{files.CertFile: {Type: "CERTIFICATE", Bytes: der},
		files.KeyFile: {Type: "EC PRIVATE KEY", Bytes: keyDER}, files.CAFile: {Type: "CERTIFICATE", Bytes: caDER}} {
		if err := os.WriteFile(path, pem.EncodeToMemory(blk), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return files
}

// TestEdgeMaxStaleness: an edge with -max-staleness keeps deciding while
// its servers are away, until that long has passed without contact; then
// it answers 503 with the JSON error, and /health and /ready say stale.
func TestEdgeMaxStaleness(t *testing.T) {
	if testing.Short() {
		t.Skip("system test: skipped with -short")
	}
	c := newInprocCluster(t)
	n := c.add("s1")
	shareRootKey(t, n)
	c.start(n)
	tok := operatorToken(t, n)
	id := newIdentity(t, c, tok)
	id.createTenant(t, "acme", 0, 0)
	key, _ := id.createAPIKey(t, "acme", "readonly")
	e := newEdgeNode(t, c, "stale-edge", echoUpstream(t).URL, func(cfg *edge.Config) { cfg.MaxStaleness = 1500 * time.Millisecond })
	id.waitEdgesCurrent(t, e.edge())
	url := "http://" + e.addr() + "/x"
	if r := send(t, "GET", url, "X-API-Key", key); r.Status != http.StatusOK {
		t.Fatalf("before: %s", r)
	}
	c.stop(n)
	lost := time.Now()
	// Still deciding within the staleness bound...
	if r := send(t, "GET", url, "X-API-Key", key); r.Status != http.StatusOK && time.Since(lost) < time.Second {
		t.Fatalf("right after the server went away: %s", r)
	}
	// ...and refusing once it is exceeded.
	waitFor(t, 10*time.Second, "the edge to refuse as stale", func() bool {
		return send(t, "GET", url, "X-API-Key", key).Status == http.StatusServiceUnavailable
	})
	r := send(t, "GET", url, "X-API-Key", key)
	var body struct {
		Error struct{ Code string } `json:"error"`
	}
	if err := json.Unmarshal(r.Body, &body); err != nil || body.Error.Code != "unavailable" {
		t.Fatalf("stale answer: %s", r)
	}
	var h struct{ Status string }
	send(t, "GET", "http://"+e.addr()+"/health").decode(t, &h)
	if h.Status != "stale" {
		t.Fatalf("health status %q, want stale", h.Status)
	}
	if r := send(t, "GET", "http://"+e.addr()+"/ready"); r.Status != http.StatusServiceUnavailable {
		t.Fatalf("ready: %s", r)
	}
	// The server comes back: the edge is fresh again.
	c.start(n)
	waitFor(t, 30*time.Second, "the edge to decide again once it hears from a server", func() bool {
		return send(t, "GET", url, "X-API-Key", key).Status == http.StatusOK
	})
}
