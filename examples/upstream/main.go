// Command upstream is the sample service behind the edges of
// docker-compose.cluster.yml: it answers every request with 200 and a JSON echo
// of the identity headers the edge attached, so a newcomer (and the fault
// tests) can see who the edge decided the caller was.
//
//	upstream -addr :9000
//
// It never echoes credentials (Authorization, cookies, API keys).
package main

import (
	"encoding/json"
	"flag"
	"log"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"
)

// Echo is the body of every answer.
type Echo struct {
	Service string            `json:"service"`
	Method  string            `json:"method"`
	Path    string            `json:"path"`
	Headers map[string]string `json:"headers"` // identity and request-id headers, never credentials
}

// secretHeaders are never echoed, whatever their prefix.
var secretHeaders = map[string]bool{
	"Authorization": true, "Proxy-Authorization": true, "Cookie": true, "X-Api-Key": true,
	"X-Allsource-Join-Token": true, "X-Allsource-Forward-Token": true,
}

// identityHeader reports whether a header is one an edge or proxy adds to
// describe the caller: X-* (X-Tenant-Id, X-User-Id, X-Role, X-Request-Id,
// X-Forwarded-For, …) but not credentials.
func identityHeader(name string) bool {
	name = http.CanonicalHeaderKey(name)
	return strings.HasPrefix(name, "X-") && !secretHeaders[name]
}

func handler(service string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		e := Echo{Service: service, Method: r.Method, Path: r.URL.Path, Headers: map[string]string{}}
		names := make([]string, 0, len(r.Header))
		for k := range r.Header {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			if identityHeader(k) {
				e.Headers[k] = strings.Join(r.Header.Values(k), ", ")
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(e)
	})
	return mux
}

func main() {
	addr := flag.String("addr", envOr("UPSTREAM_ADDR", ":9000"), "listen address (env UPSTREAM_ADDR)")
	name := flag.String("name", envOr("UPSTREAM_NAME", "sample-upstream"), "service name in the echo (env UPSTREAM_NAME)")
	flag.Parse()
	srv := &http.Server{Addr: *addr, Handler: handler(*name), ReadHeaderTimeout: 10 * time.Second}
	log.Printf("sample upstream %q listening on %s", *name, *addr)
	log.Fatal(srv.ListenAndServe())
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
