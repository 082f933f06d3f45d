package enforcement

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"time"
)

// NewProxy is the second front end: a reverse proxy to upstream. A request
// the pipeline allows is forwarded with the identity headers set by the edge
// (X-Tenant-Id, X-User-Id, X-Role, X-Credential-Type, X-Api-Key-Id; any the
// client sent are removed), X-Request-ID and X-Forwarded-*; the upstream's
// answer gets the security and rate-limit headers. A denial never reaches
// the upstream. An unreachable upstream is a 502 in the JSON error shape.
func NewProxy(p *Pipeline, rs *Responder, upstream *url.URL, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.Default()
	}
	tr := &http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: 60 * time.Second,
		ForceAttemptHTTP2:     true,
	}
	rp := &httputil.ReverseProxy{
		Transport: tr,
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(upstream)
			pr.SetXForwarded()
			StripIdentityHeaders(pr.Out.Header)
			if d, ok := pr.In.Context().Value(decisionKey{}).(*Decision); ok {
				SetIdentityHeaders(pr.Out.Header, d.Identity)
				pr.Out.Header[HeaderRequestID] = []string{d.RequestID}
			}
		},
		ModifyResponse: func(resp *http.Response) error {
			if d, ok := resp.Request.Context().Value(decisionKey{}).(*Decision); ok {
				rs.Decorate(resp.Header, d)
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			d, _ := r.Context().Value(decisionKey{}).(*Decision)
			if errors.Is(err, context.Canceled) {
				return // the client went away
			}
			log.Warn("upstream request failed", "upstream", upstream.Redacted(), "err", err)
			var b errorBody
			b.Error.Code, b.Error.Message = "unavailable", "the upstream service could not be reached"
			if d != nil {
				b.Error.RequestID = d.RequestID
				rs.Decorate(w.Header(), d)
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadGateway)
			_ = json.NewEncoder(w).Encode(&b)
		},
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if rs.CORS(w, r) {
			return
		}
		req := Request{Method: r.Method, Path: r.URL.Path, RemoteAddr: r.RemoteAddr, Header: r.Header}
		d := p.Decide(&req)
		if !d.Allowed {
			rs.WriteDenial(w, &d)
			return
		}
		rp.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), decisionKey{}, &d)))
	})
}

type decisionKey struct{}

// ParseUpstream checks an -upstream URL: http or https with a host.
func ParseUpstream(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errors.New("upstream must be an http:// or https:// URL with a host")
	}
	return u, nil
}
