package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/allsource/guard/cluster"
	"github.com/allsource/guard/fsm"
)

// Error codes of the HTTP API (DESIGN.md §10).
const (
	CodeUnauthenticated    = "unauthenticated"
	CodeForbidden          = "forbidden"
	CodeNotFound           = "not_found"
	CodeConflict           = "conflict"
	CodeInvalidArgument    = "invalid_argument"
	CodeRateLimited        = "rate_limited"
	CodeNotLeader          = "not_leader"
	CodeUnavailable        = "unavailable"
	CodeTooLarge           = "payload_too_large"
	CodeFailedPrecondition = "failed_precondition"
	CodeInternal           = "internal"
	CodeMethodNotAllowed   = "method_not_allowed"
)

// Error is an API error: a code, an HTTP status and a message safe to show.
type Error struct {
	Status  int
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

func apiErr(status int, code, msg string) *Error {
	return &Error{Status: status, Code: code, Message: msg}
}

var codeStatus = map[fsm.Code]int{
	fsm.CodeInvalidArgument:    http.StatusBadRequest,
	fsm.CodeNotFound:           http.StatusNotFound,
	fsm.CodeConflict:           http.StatusConflict,
	fsm.CodeForbidden:          http.StatusForbidden,
	fsm.CodeFailedPrecondition: http.StatusPreconditionFailed,
	fsm.CodeUnauthenticated:    http.StatusUnauthorized,
}

// toAPIError is the one place where errors of the layers below become HTTP
// answers. Anything it does not recognise is an internal error whose details
// stay in the server log.
func toAPIError(err error) *Error {
	var ae *Error
	var fe *fsm.Error
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.As(err, &fe):
		st, ok := codeStatus[fe.Code]
		if !ok {
			st = http.StatusBadRequest
		}
		return apiErr(st, string(fe.Code), fe.Message)
	case errors.Is(err, cluster.ErrNotLeader), errors.Is(err, cluster.ErrNoLeader):
		return apiErr(http.StatusServiceUnavailable, CodeNotLeader, "no leader is available; retry shortly")
	case errors.Is(err, cluster.ErrShutdown):
		return apiErr(http.StatusServiceUnavailable, CodeUnavailable, "the server is shutting down")
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return apiErr(http.StatusServiceUnavailable, CodeUnavailable, "the operation timed out; it may or may not have been applied")
	case errors.Is(err, cluster.ErrUnknownServer):
		return apiErr(http.StatusNotFound, CodeNotFound, err.Error())
	}
	return nil
}

type errorBody struct {
	Error struct {
		Code      string `json:"code"`
		Message   string `json:"message"`
		RequestID string `json:"request_id,omitempty"`
	} `json:"error"`
}

// writeError answers with the JSON error shape.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	ae := toAPIError(err)
	if ae == nil {
		s.log.Error("internal error", "err", err, "path", r.URL.Path, "request_id", requestID(r.Context()))
		ae = apiErr(http.StatusInternalServerError, CodeInternal, "internal error")
	}
	var b errorBody
	b.Error.Code, b.Error.Message, b.Error.RequestID = ae.Code, ae.Message, requestID(r.Context())
	writeJSON(w, ae.Status, b)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(true)
	_ = enc.Encode(v)
}
