package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestEchoesIdentityHeadersButNoCredentials(t *testing.T) {
	srv := httptest.NewServer(handler("svc"))
	defer srv.Close()
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/orders/7", nil)
	req.Header.Set("X-Tenant-Id", "acme")
	req.Header.Set("X-Request-Id", "r-1")
	req.Header.Set("Authorization", "Bearer secret")
	req.Header.Set("X-API-Key", "ask_secret")
	req.Header.Set("Cookie", "s=secret")
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status = %d, want 200", resp.StatusCode)
	}
	var e Echo
	if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
		t.Fatal(err)
	}
	if e.Service != "svc" || e.Method != http.MethodPost || e.Path != "/orders/7" {
		t.Errorf("echo = %+v, want service svc, POST /orders/7", e)
	}
	if e.Headers["X-Tenant-Id"] != "acme" || e.Headers["X-Request-Id"] != "r-1" {
		t.Errorf("identity headers = %v, want X-Tenant-Id and X-Request-Id echoed", e.Headers)
	}
	for _, h := range []string{"Authorization", "X-Api-Key", "Cookie"} {
		if _, ok := e.Headers[h]; ok {
			t.Errorf("credential header %s was echoed: %v", h, e.Headers)
		}
	}
}
