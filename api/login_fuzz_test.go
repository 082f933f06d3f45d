package api_test

import (
	"bytes"
	"encoding/json"
	"testing"
	"unicode/utf8"

	"github.com/allsource/guard/api"
	"github.com/allsource/guard/auth"
)

// FuzzDecodeLoginRequest: the login body decoder never panics; what it
// accepts is bounded, valid UTF-8, has the required fields, and survives a
// re-encode/decode round trip unchanged.
func FuzzDecodeLoginRequest(f *testing.F) {
	for _, s := range []string{
		`{"tenant":"acme","username":"ann","password":"correct horse"}`,
		`{"tenant":"acme","username":"ann","password":"x","totp":"123456"}`,
		`{"tenant":"acme","username":"ann","password":"x","recovery_code":"abcd-efgh"}`,
		`{"tenant":"acme","username":"ann","password":"x"} {}`,
		`{"tenant":"acme","username":"ann","password":"x","extra":1}`,
		`{"tenant":1}`, `[]`, `null`, ``, `{"tenant":"\ud800","username":"a","password":"b"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := api.DecodeLoginRequest(bytes.NewReader(body))
		if err != nil {
			return
		}
		if req.Tenant == "" || req.Username == "" || req.Password == "" {
			t.Fatalf("accepted a login without tenant, username or password: %+v", req)
		}
		for _, v := range []string{req.Tenant, req.Username, req.Password, req.TOTP, req.RecoveryCode} {
			if !utf8.ValidString(v) {
				t.Fatalf("accepted invalid UTF-8: %q", v)
			}
		}
		if len(req.Tenant) > 64 || len(req.Username) > 256 || len(req.Password) > auth.MaxPasswordBytes || len(req.TOTP) > 16 || len(req.RecoveryCode) > 64 {
			t.Fatalf("accepted an oversized field: %+v", req)
		}
		again, err := json.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		back, err := api.DecodeLoginRequest(bytes.NewReader(again))
		if err != nil || back != req {
			t.Fatalf("round trip: %+v → %s → %+v, %v", req, again, back, err)
		}
	})
}
