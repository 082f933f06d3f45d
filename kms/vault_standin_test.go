package kms

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// vaultTransitStandIn is a STAND-IN for HashiCorp Vault's transit secrets
// engine, for tests only (no Vault server can be installed here). It
// implements the endpoints the vault provider uses, as Vault's API
// documentation describes them:
//
//	GET  /v1/<mount>/keys/:name              read key   → data{type, derived, keys{"1":unix}, latest_version, min_decryption_version, ...}
//	POST /v1/<mount>/keys/:name              create key {type, derived} (no-op if it exists) → key data
//	POST /v1/<mount>/keys/:name/rotate       rotate     → key data
//	POST /v1/<mount>/keys/:name/config       {min_decryption_version} → key data
//	POST /v1/<mount>/encrypt/:name           {plaintext(b64), context(b64), key_version} → data{ciphertext "vault:vN:…", key_version}
//	                                         (upserts a missing key, derived if a context is given, as Vault does with create capability)
//	POST /v1/<mount>/decrypt/:name           {ciphertext, context} → data{plaintext(b64)}
//	POST /v1/<mount>/rewrap/:name            {ciphertext, context, key_version} → data{ciphertext, key_version}
//	POST /v1/<mount>/datakey/:type/:name     type plaintext|wrapped; {context, bits, key_version} → data{ciphertext, key_version[, plaintext]}
//
// PUT is accepted wherever POST is (Vault treats them alike; the Go client
// writes with PUT). Responses use Vault's envelope {"request_id", "data", ...};
// errors are {"errors":[...]} with 400 for bad requests (Vault's messages:
// "encryption key not found", "ciphertext or signature version is
// disallowed by policy (too old)", "invalid ciphertext: version is too
// new", "cipher: message authentication failed", ...), 403
// {"errors":["permission denied"]} for a missing or wrong X-Vault-Token (or a
// token used outside its namespace), 404 {"errors":[]} for reading a
// missing key. Keys are aes256-gcm96; derived keys use HKDF-SHA-256 of the
// version key with the context as info (Vault's hkdf_sha256 KDF).
// Ciphertexts are "vault:v<version>:" + base64(nonce(12) || GCM ciphertext || tag).
type vaultTransitStandIn struct {
	*httptest.Server
	token     string
	namespace string
	mount     string

	mu   sync.Mutex
	keys map[string]*standInKey

	// failNext makes the next n requests answer 503 (retry tests).
	failNext atomic.Int64
	requests atomic.Int64
}

type standInKey struct {
	derived    bool
	versions   [][]byte
	created    []int64
	minDecrypt int
}

func newVaultStandIn(token, namespace, mount string, tls bool) *vaultTransitStandIn {
	s := &vaultTransitStandIn{token: token, namespace: namespace, mount: mount, keys: map[string]*standInKey{}}
	s.Server = httptest.NewUnstartedServer(s)
	s.Config.ErrorLog = log.New(io.Discard, "", 0) // handshake failures are expected in the TLS tests
	if tls {
		s.StartTLS()
	} else {
		s.Start()
	}
	return s
}

func (s *vaultTransitStandIn) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.requests.Add(1)
	if s.failNext.Load() > 0 && s.failNext.Add(-1) >= 0 {
		vaultErrors(w, http.StatusServiceUnavailable, "Vault is sealed")
		return
	}
	if r.Header.Get("X-Vault-Token") != s.token || r.Header.Get("X-Vault-Namespace") != s.namespace {
		vaultErrors(w, http.StatusForbidden, "permission denied")
		return
	}
	prefix := "/v1/" + s.mount + "/"
	if !strings.HasPrefix(r.URL.Path, prefix) {
		vaultErrors(w, http.StatusNotFound, "no handler for route \""+strings.TrimPrefix(r.URL.Path, "/v1/")+"\". route entry not found.")
		return
	}
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, prefix), "/")
	write := r.Method == http.MethodPost || r.Method == http.MethodPut
	var body map[string]any
	if write && r.ContentLength != 0 {
		dec := json.NewDecoder(r.Body)
		dec.UseNumber()
		if err := dec.Decode(&body); err != nil && err.Error() != "EOF" {
			vaultErrors(w, http.StatusBadRequest, "failed to parse JSON input: "+err.Error())
			return
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case len(parts) == 2 && parts[0] == "keys" && r.Method == http.MethodGet:
		k := s.keys[parts[1]]
		if k == nil {
			vaultErrors(w, http.StatusNotFound)
			return
		}
		vaultData(w, k.info(parts[1]))
	case len(parts) == 2 && parts[0] == "keys" && write:
		if typ := strField(body, "type"); typ != "" && typ != "aes256-gcm96" {
			vaultErrors(w, http.StatusBadRequest, "unknown key type: "+typ)
			return
		}
		k := s.keys[parts[1]]
		if k == nil {
			k = &standInKey{derived: boolField(body, "derived")}
			k.rotate()
			s.keys[parts[1]] = k
		}
		vaultData(w, k.info(parts[1]))
	case len(parts) == 3 && parts[0] == "keys" && parts[2] == "rotate" && write:
		k := s.keys[parts[1]]
		if k == nil {
			vaultErrors(w, http.StatusBadRequest, "key not found")
			return
		}
		k.rotate()
		vaultData(w, k.info(parts[1]))
	case len(parts) == 3 && parts[0] == "keys" && parts[2] == "config" && write:
		k := s.keys[parts[1]]
		if k == nil {
			vaultErrors(w, http.StatusBadRequest, "no existing key named "+parts[1]+" could be found")
			return
		}
		if _, ok := body["min_decryption_version"]; ok {
			v := intField(body, "min_decryption_version")
			switch {
			case v < 0:
				vaultErrors(w, http.StatusBadRequest, "min decryption version cannot be negative")
				return
			case v > len(k.versions):
				vaultErrors(w, http.StatusBadRequest, fmt.Sprintf("cannot set min decryption version of %d, latest key version is %d", v, len(k.versions)))
				return
			case v == 0:
				v = 1
			}
			k.minDecrypt = v
		}
		vaultData(w, k.info(parts[1]))
	case len(parts) == 2 && parts[0] == "encrypt" && write:
		k := s.keys[parts[1]]
		ctxBytes, ok := b64Field(w, body, "context")
		if !ok {
			return
		}
		if k == nil { // upsert, as Vault does for a token with create capability
			k = &standInKey{derived: len(ctxBytes) > 0}
			k.rotate()
			s.keys[parts[1]] = k
		}
		pt, err := base64.StdEncoding.DecodeString(strField(body, "plaintext"))
		if err != nil {
			vaultErrors(w, http.StatusBadRequest, "failed to base64-decode plaintext")
			return
		}
		ct, ver, msg := k.encrypt(intField(body, "key_version"), ctxBytes, pt)
		if msg != "" {
			vaultErrors(w, http.StatusBadRequest, msg)
			return
		}
		vaultData(w, map[string]any{"ciphertext": ct, "key_version": ver})
	case len(parts) == 2 && parts[0] == "decrypt" && write:
		k := s.keys[parts[1]]
		if k == nil {
			vaultErrors(w, http.StatusBadRequest, "encryption key not found")
			return
		}
		ctxBytes, ok := b64Field(w, body, "context")
		if !ok {
			return
		}
		pt, msg := k.decrypt(strField(body, "ciphertext"), ctxBytes)
		if msg != "" {
			vaultErrors(w, http.StatusBadRequest, msg)
			return
		}
		vaultData(w, map[string]any{"plaintext": base64.StdEncoding.EncodeToString(pt)})
	case len(parts) == 2 && parts[0] == "rewrap" && write:
		k := s.keys[parts[1]]
		if k == nil {
			vaultErrors(w, http.StatusBadRequest, "encryption key not found")
			return
		}
		ctxBytes, ok := b64Field(w, body, "context")
		if !ok {
			return
		}
		pt, msg := k.decrypt(strField(body, "ciphertext"), ctxBytes)
		if msg != "" {
			vaultErrors(w, http.StatusBadRequest, msg)
			return
		}
		ct, ver, msg := k.encrypt(intField(body, "key_version"), ctxBytes, pt)
		if msg != "" {
			vaultErrors(w, http.StatusBadRequest, msg)
			return
		}
		vaultData(w, map[string]any{"ciphertext": ct, "key_version": ver})
	case len(parts) == 3 && parts[0] == "datakey" && write:
		if parts[1] != "plaintext" && parts[1] != "wrapped" {
			vaultErrors(w, http.StatusBadRequest, "Invalid path, must be 'plaintext' or 'wrapped'")
			return
		}
		k := s.keys[parts[2]]
		if k == nil {
			vaultErrors(w, http.StatusBadRequest, "encryption key not found")
			return
		}
		ctxBytes, ok := b64Field(w, body, "context")
		if !ok {
			return
		}
		bits := 256
		if _, set := body["bits"]; set {
			bits = intField(body, "bits")
		}
		if bits != 128 && bits != 256 && bits != 512 {
			vaultErrors(w, http.StatusBadRequest, "invalid bit length")
			return
		}
		dk := make([]byte, bits/8)
		rand.Read(dk)
		ct, ver, msg := k.encrypt(intField(body, "key_version"), ctxBytes, dk)
		if msg != "" {
			vaultErrors(w, http.StatusBadRequest, msg)
			return
		}
		data := map[string]any{"ciphertext": ct, "key_version": ver}
		if parts[1] == "plaintext" {
			data["plaintext"] = base64.StdEncoding.EncodeToString(dk)
		}
		vaultData(w, data)
	default:
		vaultErrors(w, http.StatusMethodNotAllowed, "unsupported operation")
	}
}

func (k *standInKey) rotate() {
	key := make([]byte, 32)
	rand.Read(key)
	k.versions = append(k.versions, key)
	k.created = append(k.created, time.Now().Unix())
	if k.minDecrypt == 0 {
		k.minDecrypt = 1
	}
}

func (k *standInKey) info(name string) map[string]any {
	keys := map[string]int64{}
	for i, c := range k.created {
		keys[strconv.Itoa(i+1)] = c
	}
	info := map[string]any{
		"name": name, "type": "aes256-gcm96", "derived": k.derived, "keys": keys,
		"latest_version": len(k.versions), "min_decryption_version": k.minDecrypt,
		"min_encryption_version": 0, "min_available_version": 0,
		"supports_encryption": true, "supports_decryption": true, "supports_derivation": true, "supports_signing": false,
		"exportable": false, "deletion_allowed": false, "convergent_encryption": false,
	}
	if k.derived {
		info["kdf"] = "hkdf_sha256"
	}
	return info
}

func (k *standInKey) gcm(ver int, context []byte) (cipher.AEAD, string) {
	key := k.versions[ver-1]
	if k.derived {
		if len(context) == 0 {
			return nil, "missing 'context' for key derivation; the key was created using a derived key, which means additional, per-request information must be included in order to perform operations with the key"
		}
		var err error
		if key, err = hkdf.Key(sha256.New, key, nil, string(context), 32); err != nil {
			return nil, err.Error()
		}
	}
	block, _ := aes.NewCipher(key)
	g, _ := cipher.NewGCM(block)
	return g, ""
}

func (k *standInKey) encrypt(ver int, context, pt []byte) (string, int, string) {
	switch {
	case ver == 0:
		ver = len(k.versions)
	case ver < 0:
		return "", 0, "requested version for encryption is negative"
	case ver > len(k.versions):
		return "", 0, "requested version for encryption is higher than the latest key version"
	}
	g, msg := k.gcm(ver, context)
	if msg != "" {
		return "", 0, msg
	}
	nonce := make([]byte, g.NonceSize())
	rand.Read(nonce)
	sealed := g.Seal(nonce, nonce, pt, nil)
	return "vault:v" + strconv.Itoa(ver) + ":" + base64.StdEncoding.EncodeToString(sealed), ver, ""
}

func (k *standInKey) decrypt(ct string, context []byte) ([]byte, string) {
	if !strings.HasPrefix(ct, "vault:v") {
		return nil, "invalid ciphertext: no prefix"
	}
	split := strings.SplitN(strings.TrimPrefix(ct, "vault:v"), ":", 2)
	if len(split) != 2 {
		return nil, "invalid ciphertext: wrong number of fields"
	}
	ver, err := strconv.Atoi(split[0])
	if err != nil {
		return nil, "invalid ciphertext: version number could not be decoded"
	}
	if ver == 0 { // Vault: compatibility with keys that started at zero
		ver = 1
	}
	if ver > len(k.versions) {
		return nil, "invalid ciphertext: version is too new"
	}
	if k.minDecrypt > 0 && ver < k.minDecrypt {
		return nil, "ciphertext or signature version is disallowed by policy (too old)"
	}
	raw, err := base64.StdEncoding.DecodeString(split[1])
	if err != nil {
		return nil, "invalid ciphertext: could not decode base64"
	}
	g, msg := k.gcm(ver, context)
	if msg != "" {
		return nil, msg
	}
	if len(raw) < g.NonceSize() {
		return nil, "invalid ciphertext length"
	}
	pt, err := g.Open(nil, raw[:g.NonceSize()], raw[g.NonceSize():], nil)
	if err != nil {
		return nil, "cipher: message authentication failed"
	}
	return pt, ""
}

// latest returns a key's latest version (test inspection).
func (s *vaultTransitStandIn) latest(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if k := s.keys[name]; k != nil {
		return len(k.versions)
	}
	return 0
}

func (s *vaultTransitStandIn) minDecryption(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if k := s.keys[name]; k != nil {
		return k.minDecrypt
	}
	return 0
}

func vaultData(w http.ResponseWriter, data map[string]any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{
		"request_id": fmt.Sprintf("%x", time.Now().UnixNano()), "lease_id": "", "renewable": false, "lease_duration": 0,
		"data": data, "wrap_info": nil, "warnings": nil, "auth": nil,
	})
}

func vaultErrors(w http.ResponseWriter, status int, msgs ...string) {
	if msgs == nil {
		msgs = []string{}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"errors": msgs})
}

func strField(body map[string]any, k string) string {
	s, _ := body[k].(string)
	return s
}

func boolField(body map[string]any, k string) bool {
	switch v := body[k].(type) {
	case bool:
		return v
	case string:
		b, _ := strconv.ParseBool(v)
		return b
	}
	return false
}

func intField(body map[string]any, k string) int {
	switch v := body[k].(type) {
	case json.Number:
		n, _ := v.Int64()
		return int(n)
	case string:
		n, _ := strconv.Atoi(v)
		return n
	}
	return 0
}

func b64Field(w http.ResponseWriter, body map[string]any, k string) ([]byte, bool) {
	s := strField(body, k)
	if s == "" {
		return nil, true
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		vaultErrors(w, http.StatusBadRequest, "failed to base64-decode "+k)
		return nil, false
	}
	return b, true
}
