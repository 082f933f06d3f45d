package api_test

import (
	"net/http"
	"strings"
	"testing"
)

// TestHandlerPanicIsRecovered: a panicking handler answers 500 with the JSON
// error shape, its panic value stays in the log, and the server goes on.
func TestHandlerPanicIsRecovered(t *testing.T) {
	ts := startServer(t, false)
	const detail = "secret-panic-detail /var/lib/allsource"
	a := ts.srv.API()
	a.Handle("GET /test/panic", "test_panic", func(http.ResponseWriter, *http.Request) { panic(detail) })
	a.Handle("GET /test/panic-error", "test_panic_error", func(http.ResponseWriter, *http.Request) {
		var m map[string]int
		m["boom"]++ // a runtime error, not a string
	})
	a.Handle("GET /test/panic-after-write", "test_panic_after_write", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusAccepted)
		_, _ = w.Write([]byte("partial"))
		panic(detail)
	})
	a.Handle("GET /test/abort", "test_abort", func(http.ResponseWriter, *http.Request) { panic(http.ErrAbortHandler) })

	for _, path := range []string{"/test/panic", "/test/panic-error"} {
		before := ts.state()
		resp, body := ts.do("GET", path, "", ts.op())
		checkError(t, path, resp, body, http.StatusInternalServerError, "internal", ts.token, detail, "assignment to entry in nil map")
		ts.unchanged(before, path)
	}

	// Once the handler has answered, the recovery does not write a second answer.
	resp, body := ts.do("GET", "/test/panic-after-write", "", nil)
	if resp.StatusCode != http.StatusAccepted || string(body) != "partial" {
		t.Errorf("panic after writing: %d %q, want the handler's own 202 \"partial\"", resp.StatusCode, body)
	}

	// http.ErrAbortHandler still aborts the response (net/http closes the connection).
	req, err := http.NewRequest("GET", ts.base+"/test/abort", nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := ts.client.Do(req); err == nil {
		resp.Body.Close()
		t.Errorf("ErrAbortHandler: got a %d answer, want the connection aborted", resp.StatusCode)
	}

	// The server still serves.
	b := ts.mustOK("GET", "/v1/tenants", "", http.StatusOK)
	if !strings.Contains(string(b), `"tenants"`) {
		t.Fatalf("tenant list after panics: %s", b)
	}
}
