package auth

import (
	"testing"
	"time"
)

// go test -run '^$' -bench . -benchmem ./auth

func benchVerifyJWT(b *testing.B, alg Alg) {
	f := newJWTFixture(b)
	k := f.ed1
	if alg == AlgHS256 {
		k = f.hs
	}
	tok := mint(b, validClaims(), k)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := Verify(tok, f.ks, f.opts); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifyJWTEd25519(b *testing.B) { benchVerifyJWT(b, AlgEdDSA) }
func BenchmarkVerifyJWTHS256(b *testing.B)   { benchVerifyJWT(b, AlgHS256) }

func BenchmarkMintJWTEd25519(b *testing.B) {
	f := newJWTFixture(b)
	c := validClaims()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Mint(c, f.ed1); err != nil {
			b.Fatal(err)
		}
	}
}

// The front end alone: what garbage costs before any cryptography.
func BenchmarkParseUnverifiedHeader(b *testing.B) {
	f := newJWTFixture(b)
	tok := mint(b, validClaims(), f.ed1)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseUnverifiedHeader(tok); err != nil {
			b.Fatal(err)
		}
	}
}

// The edge's per-request API-key check: parse (format + checksum), keyed
// hash, constant-time compare.
func BenchmarkAPIKeyVerify(b *testing.B) {
	raw, key, err := NewAPIKey(nil)
	if err != nil {
		b.Fatal(err)
	}
	stored := testPepper.HashAPIKey(key)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			k, err := ParseAPIKey(raw)
			if err != nil || !VerifyAPIKeySecret(testPepper, k, stored) {
				b.Fatal("verify failed")
			}
		}
	})
}

func BenchmarkAPIKeyVerifySerial(b *testing.B) {
	raw, key, _ := NewAPIKey(nil)
	stored := testPepper.HashAPIKey(key)
	b.ReportAllocs()
	for b.Loop() {
		k, err := ParseAPIKey(raw)
		if err != nil || !VerifyAPIKeySecret(testPepper, k, stored) {
			b.Fatal("verify failed")
		}
	}
}

func BenchmarkArgon2idHashDefault(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := HashPassword(nil, "correct horse battery staple", DefaultParams); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "hashes/s")
}

func BenchmarkTOTPValidate(b *testing.B) {
	secret, _ := DefaultTOTP.GenerateSecret(nil)
	now := time.Unix(1_700_000_000, 0)
	code, _ := DefaultTOTP.Code(secret, now)
	b.ReportAllocs()
	for b.Loop() {
		if _, ok, err := DefaultTOTP.Validate(secret, code, now, 0); !ok || err != nil {
			b.Fatal("validate failed")
		}
	}
}

func BenchmarkOperatorTokenVerify(b *testing.B) {
	tok, _ := NewOperatorToken(nil)
	stored, _ := testPepper.HashOperatorToken(tok)
	b.ReportAllocs()
	for b.Loop() {
		if !VerifyOperatorToken(testPepper, tok, stored) {
			b.Fatal("verify failed")
		}
	}
}
