// Command embedded is a Go service that embeds an AllSource Guard edge: the
// enforcement pipeline runs inside the service as net/http middleware, from
// a replica of the enforcement view kept in step with the servers, so every
// request is authenticated, authorised, IP-filtered and rate-limited with no
// network call on the request path.
//
//	ALLSOURCE_JOIN_TOKEN=… embedded -join 127.0.0.1:8081,127.0.0.1:8082 -data-dir /var/lib/orders-edge -addr :9000
//
// Handlers read the caller with enforcement.IdentityFrom(r.Context()) (or
// the X-Tenant-Id, X-User-Id and X-Role headers the middleware sets).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/allsource/guard/enforcement"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:9000", "listen address of the service")
	join := flag.String("join", "127.0.0.1:8080", "comma-separated HTTP addresses of AllSource Guard servers")
	dataDir := flag.String("data-dir", "", "where the edge persists its view and audit spool (empty: memory only)")
	nodeID := flag.String("node-id", "orders-1", "this service instance's edge id")
	routes := flag.String("routes", "POST /orders/*/refund=admin", "route → permission map (see allsource edge -h)")
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	rm, err := enforcement.ParseRouteMap(*routes)
	if err != nil {
		log.Error("bad -routes", "err", err)
		os.Exit(2)
	}
	edge, err := enforcement.New(enforcement.Config{
		NodeID:    *nodeID,
		DataDir:   *dataDir,
		JoinToken: os.Getenv("ALLSOURCE_JOIN_TOKEN"),
		Servers:   strings.Split(*join, ","),
		Routes:    rm,
		Logger:    log,
	})
	if err != nil {
		log.Error("edge", "err", err)
		os.Exit(1)
	}
	edge.Start()
	defer edge.Close()

	app := http.NewServeMux()
	app.HandleFunc("GET /orders", func(w http.ResponseWriter, r *http.Request) {
		id, _ := enforcement.IdentityFrom(r.Context())
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"tenant": id.Tenant, "caller": id.Subject, "role": id.Role, "orders": []string{}})
	})
	app.HandleFunc("POST /orders/{id}/refund", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusAccepted)
	})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(edge.Health())
	})
	mux.Handle("/", edge.Middleware(app))

	srv := &http.Server{Addr: *addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	log.Info("orders service with an embedded edge", "addr", *addr, "servers", *join)
	if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		log.Error("listen", "err", err)
		os.Exit(1)
	}
}
