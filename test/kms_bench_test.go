package test

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

// BenchmarkKMSHTTP measures the field-encryption API over loopback HTTP on
// one server with a local-backend key and a warm data-key cache: the full
// path (authentication by API key, JSON, base64, tenant and key checks,
// envelope encryption, the audit entry through the batcher) for one 1 KiB
// field per request and for batches of 100. Reports fields/s.
func BenchmarkKMSHTTP(b *testing.B) {
	e := benchCluster(b, 1)
	dev := cred{name: "dev", apiKey: e.createKey("acme", e.opCred(), "bench", "developer", "").Key}
	e.must(201, 0, "POST", "/v1/kms/keys", e.opCred(), map[string]any{"name": "bench", "tenant": "acme"}, nil)
	pt := base64.StdEncoding.EncodeToString([]byte(strings.Repeat("x", 1024)))
	ctx := map[string]string{"field": "doc"}
	items := make([]map[string]string, 100)
	for i := range items {
		items[i] = map[string]string{"plaintext": pt}
	}
	var one struct {
		Ciphertext string `json:"ciphertext"`
	}
	e.must(200, 0, "POST", "/v1/kms/encrypt", dev, map[string]any{"key": "bench", "plaintext": pt, "context": ctx}, &one)
	var batch struct {
		Items []struct {
			Ciphertext string `json:"ciphertext"`
		} `json:"items"`
	}
	e.must(200, 0, "POST", "/v1/kms/encrypt", dev, map[string]any{"key": "bench", "context": ctx, "items": items}, &batch)
	cts := make([]map[string]string, len(batch.Items))
	for i, it := range batch.Items {
		cts[i] = map[string]string{"ciphertext": it.Ciphertext}
	}
	cases := []struct {
		name  string
		path  string
		body  any
		items int
	}{
		{"encrypt-1", "/v1/kms/encrypt", map[string]any{"key": "bench", "plaintext": pt, "context": ctx}, 1},
		{"decrypt-1", "/v1/kms/decrypt", map[string]any{"ciphertext": one.Ciphertext, "context": ctx}, 1},
		{"encrypt-batch100", "/v1/kms/encrypt", map[string]any{"key": "bench", "context": ctx, "items": items}, 100},
		{"decrypt-batch100", "/v1/kms/decrypt", map[string]any{"context": ctx, "items": cts}, 100},
	}
	for _, c := range cases {
		body, _ := json.Marshal(c.body)
		b.Run(c.name, func(b *testing.B) {
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if r := e.call(0, "POST", c.path, dev, json.RawMessage(body)); r.status != http.StatusOK {
						b.Errorf("%s: %s", c.name, r)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N*c.items)/time.Since(start).Seconds(), "fields/s")
		})
	}
}
