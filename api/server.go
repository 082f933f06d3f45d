// Package api is the HTTP admin API of an AllSource Guard server: JSON in and
// out, one error shape, request ids, body limits, Prometheus metrics, and one
// forwarding component that sends writes (and default-consistency reads) from a
// follower to the leader. Authentication and authorization decisions made here
// are re-checked inside the state machine's Apply.
package api

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/allsource/guard/cluster"
	"github.com/allsource/guard/fsm"
	"github.com/prometheus/client_golang/prometheus"
)

// Node is what the API needs of the raft node (satisfied by *cluster.Node).
type Node interface {
	Apply(ctx context.Context, c fsm.Command) (*fsm.Result, error)
	IsLeader() bool
	State() string
	ID() string
	Leader() (id, addr string)
	LeaderHTTP() (string, error)
	AppliedIndex() uint64
	CommitIndex() uint64
	LastIndex() uint64
	Term() uint64
	LastContact() time.Time
	// ElectionKicks counts the elections this server started early
	// (cluster/failover.go): its leader silent for the heartbeat timeout, or
	// a candidate asking for its vote while it was.
	ElectionKicks() (silence, vote int64)
	VerifyRead(ctx context.Context) error
	// CaughtUp reports whether the local state has caught up with the
	// cluster since the process started.
	CaughtUp() bool
	Servers() ([]cluster.Server, error)
	AddNonvoter(id, addr string) error
	RemoveServer(id string) error
	TransferLeadership(id string) error
	SnapshotReader() (io.ReadCloser, uint64, error)
	Restore(r io.Reader, size int64) error
	Gossip() *cluster.Gossip
}

// Config configures the API server.
type Config struct {
	NodeID  string
	Version string
	DevMode bool
	// JoinToken admits servers and edges to the cluster; it is also how a
	// leader recognises requests forwarded by a peer.
	JoinToken string
	// MaxBodyBytes bounds request bodies (default 1 MiB); MaxSnapshotBytes
	// bounds snapshot uploads (default 8 GiB).
	MaxBodyBytes     int64
	MaxSnapshotBytes int64
	// ClientTLS is used when forwarding to the leader; Scheme is http or https.
	ClientTLS *tls.Config
	Scheme    string
	// PublicMetrics serves /metrics without a credential.
	PublicMetrics bool
	Logger        *slog.Logger
	// Now is the clock (tests inject one).
	Now func() time.Time
}

// Server is the HTTP API of one server node.
type Server struct {
	cfg     Config
	node    Node
	fsm     *fsm.FSM
	log     *slog.Logger
	mux     *http.ServeMux
	proxy   *http.Client
	metrics *metrics
	reg     *prometheus.Registry
	id      *identity // users, logins, tokens, API keys, IP rules (EnableIdentity)
	kms     *kmsState // the KMS endpoints (EnableKMS)
	// leaderCalls holds a slot per call to the leader in flight (catchup.go).
	leaderCalls chan struct{}
}

// New builds the API server.
func New(cfg Config, node Node, f *fsm.FSM) *Server {
	if cfg.MaxBodyBytes == 0 {
		cfg.MaxBodyBytes = 1 << 20
	}
	if cfg.MaxSnapshotBytes == 0 {
		cfg.MaxSnapshotBytes = 8 << 30
	}
	if cfg.Scheme == "" {
		cfg.Scheme = "http"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Server{cfg: cfg, node: node, fsm: f, log: cfg.Logger.With("component", "api"), mux: http.NewServeMux(),
		leaderCalls: make(chan struct{}, maxLeaderIndexCalls)}
	s.reg = prometheus.NewRegistry()
	s.metrics = newMetrics(s.reg, node)
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     cfg.ClientTLS,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
	}
	s.proxy = &http.Client{Transport: tr, Timeout: 5 * time.Minute,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	s.routes()
	return s
}

// Handler returns the HTTP handler.
func (s *Server) Handler() http.Handler { return http.HandlerFunc(s.serveHTTP) }

// serveHTTP refuses a non-canonical path ("/a/../b", "/a/./b", "//a") with the
// JSON error shape before routing: ServeMux would answer it with a redirect to
// the cleaned path (an HTML body, and for 307 the same method and body sent to
// what may be another resource).
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if p := r.URL.EscapedPath(); strings.HasPrefix(p, "/") && p != cleanPath(p) {
		s.wrap("noncanonical", func(w http.ResponseWriter, r *http.Request) {
			s.writeError(w, r, apiErr(http.StatusBadRequest, CodeInvalidArgument, "the path is not canonical ('.', '..' or empty segments)"))
		})(w, r)
		return
	}
	s.mux.ServeHTTP(w, r)
}

// cleanPath is ServeMux's notion of a canonical path: path.Clean, keeping a
// trailing slash.
func cleanPath(p string) string {
	np := path.Clean(p)
	if strings.HasSuffix(p, "/") && np != "/" {
		np += "/"
	}
	return np
}

// allowedMethods lists the methods that have a route for r's path. ServeMux
// never answers 405 itself here: the catch-all route matches every method.
func (s *Server) allowedMethods(r *http.Request) []string {
	var out []string
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		probe := &http.Request{Method: m, URL: r.URL, Host: r.Host, Header: http.Header{}}
		if _, pattern := s.mux.Handler(probe); pattern != "" && pattern != "/" {
			out = append(out, m)
		}
	}
	return out
}

// Registry is the server's Prometheus registry (other components add to it).
func (s *Server) Registry() *prometheus.Registry { return s.reg }

// Handle lets other components (the KMS service, the edge watch stream) mount
// routes on the same server with the same middleware.
func (s *Server) Handle(pattern, route string, h http.HandlerFunc) {
	s.mux.HandleFunc(pattern, s.wrap(route, h))
}

func (s *Server) routes() {
	h := func(pattern string, fn http.HandlerFunc) { s.mux.HandleFunc(pattern, s.wrap(pattern, fn)) }
	h("GET /health", s.handleHealth)
	h("GET /ready", s.handleReady)
	h("GET /metrics", s.handleMetrics)

	h("POST /v1/tenants", s.write(s.createTenant))
	h("GET /v1/tenants", s.read(s.listTenants))
	h("GET /v1/tenants/{t}", s.read(s.getTenant))
	h("PATCH /v1/tenants/{t}", s.write(s.updateTenant))
	h("DELETE /v1/tenants/{t}", s.write(s.deleteTenant))
	h("POST /v1/tenants/{t}/suspend", s.write(s.setTenantStatus(fsm.TenantSuspended)))
	h("POST /v1/tenants/{t}/activate", s.write(s.setTenantStatus(fsm.TenantActive)))
	h("GET /v1/tenants/{t}/rate-limit", s.read(s.getRateLimit))
	h("PUT /v1/tenants/{t}/rate-limit", s.write(s.putRateLimit))
	h("GET /v1/tenants/{t}/audit", s.read(s.queryAudit))
	h("GET /v1/audit", s.read(s.queryClusterAudit))
	h("GET /v1/audit/verify", s.read(s.verifyAudit))
	h("POST /v1/audit/retention", s.write(s.auditRetention))

	h("GET /v1/cluster/members", s.read(s.members))
	h("POST /v1/cluster/join", s.leaderOnly(s.join))
	h("DELETE /v1/cluster/members/{id}", s.write(s.removeMember))
	h("POST /v1/cluster/leadership-transfer", s.write(s.leadershipTransfer))
	h("GET /v1/cluster/snapshot", s.write(s.downloadSnapshot))
	s.mux.HandleFunc("PUT /v1/cluster/snapshot", s.wrapLimit("PUT /v1/cluster/snapshot", s.cfg.MaxSnapshotBytes, s.write(s.restoreSnapshot)))

	s.mux.HandleFunc("/", s.wrap("unmatched", func(w http.ResponseWriter, r *http.Request) {
		if allow := s.allowedMethods(r); len(allow) > 0 {
			w.Header().Set("Allow", strings.Join(allow, ", "))
			s.writeError(w, r, apiErr(http.StatusMethodNotAllowed, CodeMethodNotAllowed, "method "+r.Method+" is not allowed on this endpoint"))
			return
		}
		s.writeError(w, r, apiErr(http.StatusNotFound, CodeNotFound, "no such endpoint"))
	}))
}
