package enforcement

import (
	"net/http"
)

// Middleware is the first front end: net/http middleware for Go services
// that embed an edge. Every request runs the decision pipeline; a denial is
// answered at once (401/403/429/503 with the JSON error), an allowed request
// reaches next with its identity in the context (IdentityFrom) and in the
// identity headers (client-sent ones are removed first), and every answer
// carries the security headers, X-Request-ID and the rate-limit headers.
// CORS preflights are answered here without authentication.
func Middleware(p *Pipeline, rs *Responder, next http.Handler) http.Handler {
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
		rs.Decorate(w.Header(), &d)
		StripIdentityHeaders(r.Header)
		SetIdentityHeaders(r.Header, d.Identity)
		r.Header[HeaderRequestID] = []string{d.RequestID}
		next.ServeHTTP(w, r.WithContext(WithIdentity(r.Context(), &d)))
	})
}
