package fsm

import (
	"errors"
	"fmt"
)

// Code is a business-error code. The API maps codes to HTTP statuses; they also
// cross the network between servers, so they are strings, never matched on text.
type Code string

const (
	CodeInvalidArgument    Code = "invalid_argument"
	CodeNotFound           Code = "not_found"
	CodeConflict           Code = "conflict"
	CodeForbidden          Code = "forbidden"
	CodeFailedPrecondition Code = "failed_precondition"
	CodeUnauthenticated    Code = "unauthenticated"
)

// Error is a business error decided by Apply: every replica reaches the same one.
// It travels in the FSM response, never as the raft future's error.
type Error struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return string(e.Code) + ": " + e.Message }

// Is lets errors.Is match on the code: errors.Is(err, &Error{Code: CodeNotFound}).
func (e *Error) Is(target error) bool {
	var t *Error
	if errors.As(target, &t) {
		return t.Code == e.Code && (t.Message == "" || t.Message == e.Message)
	}
	return false
}

func errf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Sentinels for errors.Is.
var (
	ErrNotFound  = &Error{Code: CodeNotFound}
	ErrConflict  = &Error{Code: CodeConflict}
	ErrForbidden = &Error{Code: CodeForbidden}
	ErrInvalid   = &Error{Code: CodeInvalidArgument}
)

// Result is what Apply returns for each log entry.
type Result struct {
	Index uint64
	Value any    // the created or changed record, command-specific
	Err   *Error // nil on success
}

// Error returns the business error as an error (nil when there is none), so
// callers can write `if err := res.Error(); err != nil`.
func (r *Result) Error() error {
	if r == nil || r.Err == nil {
		return nil
	}
	return r.Err
}
