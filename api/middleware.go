package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"
)

type ctxKey int

const (
	ctxRequestID ctxKey = iota
	ctxPrincipal
)

func requestID(ctx context.Context) string {
	s, _ := ctx.Value(ctxRequestID).(string)
	return s
}

var requestIDPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)

func newRequestID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// wrap applies the outer middleware: request id, panic recovery, body limit,
// security headers on API answers, metrics and an access log line.
func (s *Server) wrap(route string, h http.HandlerFunc) http.HandlerFunc {
	return s.wrapLimit(route, s.cfg.MaxBodyBytes, h)
}

func (s *Server) wrapLimit(route string, limit int64, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rid := r.Header.Get("X-Request-ID")
		if !requestIDPattern.MatchString(rid) {
			rid = newRequestID()
		}
		ctx := context.WithValue(r.Context(), ctxRequestID, rid)
		r = r.WithContext(ctx)
		w.Header().Set("X-Request-ID", rid)
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Cache-Control", "no-store")
		if r.Body != nil {
			r.Body = http.MaxBytesReader(w, r.Body, limit)
		}
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				s.log.Error("handler panic", "panic", fmt.Sprint(p), "route", route, "request_id", rid)
				if sw.status == 0 {
					s.writeError(sw, r, apiErr(http.StatusInternalServerError, CodeInternal, "internal error"))
				}
			}
			s.metrics.httpRequests.WithLabelValues(r.Method, route, strconv.Itoa(sw.status)).Inc()
			s.metrics.httpDuration.WithLabelValues(route).Observe(time.Since(start).Seconds())
		}()
		h(sw, r)
	}
}

// decodeJSON reads a JSON body strictly: unknown fields, trailing data and
// oversized bodies are client errors.
func decodeJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &mbe):
			return apiErr(http.StatusRequestEntityTooLarge, CodeTooLarge, fmt.Sprintf("request body is larger than %d bytes", mbe.Limit))
		case errors.Is(err, io.EOF):
			return apiErr(http.StatusBadRequest, CodeInvalidArgument, "request body is empty")
		case errors.As(err, &se):
			return apiErr(http.StatusBadRequest, CodeInvalidArgument, fmt.Sprintf("malformed JSON at byte %d", se.Offset))
		case errors.As(err, &te):
			return apiErr(http.StatusBadRequest, CodeInvalidArgument, fmt.Sprintf("field %q has the wrong type", te.Field))
		case strings.HasPrefix(err.Error(), "json: unknown field"):
			return apiErr(http.StatusBadRequest, CodeInvalidArgument, strings.TrimPrefix(err.Error(), "json: "))
		}
		return apiErr(http.StatusBadRequest, CodeInvalidArgument, "malformed JSON body")
	}
	if dec.More() {
		return apiErr(http.StatusBadRequest, CodeInvalidArgument, "unexpected data after the JSON body")
	}
	var extra json.RawMessage
	if err := dec.Decode(&extra); err != io.EOF {
		// A valid body padded past the limit is still too large.
		if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
			return apiErr(http.StatusRequestEntityTooLarge, CodeTooLarge, fmt.Sprintf("request body is larger than %d bytes", mbe.Limit))
		}
		return apiErr(http.StatusBadRequest, CodeInvalidArgument, "unexpected data after the JSON body")
	}
	return nil
}
