package main

import (
	"bufio"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/allsource/guard/kms"
)

// The KMS commands: `allsource kms init-local` (offline: a new root key
// file) and the API clients `allsource kms key ...` and
// `allsource kms encrypt|decrypt|datakey|rewrap`.

func runKMS(args []string) error {
	return sub("kms", args, map[string]func([]string) error{
		"init-local": runKMSInitLocal,
		"key":        runKMSKey,
		"encrypt":    kmsFieldCmd("encrypt"),
		"decrypt":    kmsFieldCmd("decrypt"),
		"rewrap":     kmsFieldCmd("rewrap"),
		"datakey":    kmsFieldCmd("datakey"),
	})
}

// runKMSInitLocal writes a new local root key file (mode 0600). It never
// overwrites a file: replacing a cluster's root key makes what it wrapped
// unreadable.
func runKMSInitLocal(args []string) error {
	fs := flag.NewFlagSet("kms init-local", flag.ContinueOnError)
	out := fs.String("out", "", "path of the new root key file (created with mode 0600; an existing file is never overwritten)")
	pos, err := parseWith(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 1 && *out == "" {
		*out = pos[0]
	} else if len(pos) != 0 || *out == "" {
		return errors.New("usage: allsource kms init-local -out FILE")
	}
	if _, err := os.Lstat(*out); err == nil {
		return fmt.Errorf("%s exists; refusing to overwrite a root key (what it wrapped would become unreadable)", *out)
	}
	key, err := kms.InitLocalRootKey(*out)
	if err != nil {
		return err
	}
	id := kms.RootKeyID(key)
	clear(key)
	fmt.Fprintf(os.Stderr, "wrote a new KMS root key to %s (mode 0600, key id %s)\n"+
		"Copy it to every server over a secure channel and start them with -kms-root-key-file %s\n", *out, id, *out)
	return nil
}

// kmsKeyPath is a key's route. A tenant names its keys by their short name;
// the operator names a tenant's key with the tenant ("pii" and -tenant acme,
// sent as ?tenant=acme) or as "acme/pii" (sent escaped, acme%2Fpii).
func kmsKeyPath(name, tenant string) string {
	p := "/v1/kms/keys/" + url.PathEscape(name)
	if tenant != "" {
		return p + "?tenant=" + url.QueryEscape(tenant)
	}
	return p
}

// kmsKeySubPath is kmsKeyPath with a sub-resource (/rotate, /grants).
func kmsKeySubPath(name, tenant, sub string) string {
	p := "/v1/kms/keys/" + url.PathEscape(name) + sub
	if tenant != "" {
		return p + "?tenant=" + url.QueryEscape(tenant)
	}
	return p
}

type kmsKeyOut struct {
	Name                 string   `json:"name"`
	Tenant               string   `json:"tenant"`
	Backend              string   `json:"backend"`
	LatestVersion        int      `json:"latest_version"`
	MinDecryptionVersion int      `json:"min_decryption_version"`
	RotationPeriod       string   `json:"rotation_period"`
	NextRotation         string   `json:"next_rotation"`
	Grants               []string `json:"grants"`
}

func runKMSKey(args []string) error {
	return sub("kms key", args, map[string]func([]string) error{
		"create": groupCmd("kms key create", "allsource kms key create NAME [-tenant T] [-backend B] [-rotation-period 720h] [-backend-ref REF]", 1, false,
			func(fs *flag.FlagSet) func(*client, string, []string) error {
				backend := fs.String("backend", "", "local, vault, aws or pkcs11 (default: the server's -kms-backend)")
				period := fs.String("rotation-period", "", "rotate automatically this often (at least 1h; default: manual only)")
				ref := fs.String("backend-ref", "", "adopt existing backend material as version 1 (operator only)")
				return func(c *client, t string, pos []string) error {
					body := map[string]any{"name": pos[0]}
					if t != "" {
						body["tenant"] = t
					}
					if *backend != "" {
						body["backend"] = *backend
					}
					if *period != "" {
						body["rotation_period"] = *period
					}
					if *ref != "" {
						body["backend_ref"] = *ref
					}
					return simple(c, "POST", "/v1/kms/keys", body)
				}
			}),
		"list": groupCmd("kms key list", "allsource kms key list", 0, false, func(fs *flag.FlagSet) func(*client, string, []string) error {
			return func(c *client, _ string, _ []string) error {
				var out struct {
					Keys []kmsKeyOut `json:"keys"`
				}
				if shown, err := c.fetch("GET", "/v1/kms/keys", nil, &out); err != nil || shown {
					return err
				}
				rows := [][]string{}
				for _, k := range out.Keys {
					owner := k.Tenant
					if owner == "" {
						owner = "(global)"
					}
					rows = append(rows, []string{k.Name, owner, k.Backend, strconv.Itoa(k.LatestVersion), strconv.Itoa(k.MinDecryptionVersion),
						firstNonEmpty(k.RotationPeriod, "-"), strings.Join(k.Grants, ",")})
				}
				table([]string{"NAME", "OWNER", "BACKEND", "VERSION", "MIN_DECRYPT", "ROTATION", "GRANTS"}, rows)
				return nil
			}
		}),
		"get": groupCmd("kms key get", "allsource kms key get NAME [-tenant T]   (the operator names a tenant's key with -tenant or as T/NAME)", 1, false, func(fs *flag.FlagSet) func(*client, string, []string) error {
			return func(c *client, t string, pos []string) error { return simple(c, "GET", kmsKeyPath(pos[0], t), nil) }
		}),
		"rotate": groupCmd("kms key rotate", "allsource kms key rotate NAME [-tenant T]", 1, false, func(fs *flag.FlagSet) func(*client, string, []string) error {
			return func(c *client, t string, pos []string) error {
				return simple(c, "POST", kmsKeySubPath(pos[0], t, "/rotate"), nil)
			}
		}),
		"set": groupCmd("kms key set", "allsource kms key set NAME [-tenant T] [-min-decryption-version N] [-rotation-period D|0]", 1, false,
			func(fs *flag.FlagSet) func(*client, string, []string) error {
				minDec := fs.Int("min-decryption-version", 0, "retire the versions below N (their ciphertexts stop decrypting; rewrap first)")
				period := fs.String("rotation-period", "", "scheduled rotation period (0 turns it off)")
				return func(c *client, t string, pos []string) error {
					body := map[string]any{}
					if *minDec > 0 {
						body["min_decryption_version"] = *minDec
					}
					if *period != "" {
						body["rotation_period"] = *period
					}
					if len(body) == 0 {
						return errors.New("give -min-decryption-version and/or -rotation-period")
					}
					return simple(c, "PATCH", kmsKeyPath(pos[0], t), body)
				}
			}),
		"grant": groupCmd("kms key grant", "allsource kms key grant NAME -tenant T [-revoke]   (global keys only; T is the grantee)", 1, true,
			func(fs *flag.FlagSet) func(*client, string, []string) error {
				revoke := fs.Bool("revoke", false, "end the grant instead")
				return func(c *client, t string, pos []string) error {
					if *revoke {
						return simple(c, "DELETE", kmsKeySubPath(pos[0], "", "/grants/"+url.PathEscape(t)), nil)
					}
					return simple(c, "POST", kmsKeySubPath(pos[0], "", "/grants"), map[string]string{"tenant": t})
				}
			}),
	})
}

// kmsFieldCmd is encrypt, decrypt, rewrap or datakey. The value is the
// positional argument, or standard input with "-" or none; the answer's
// ciphertext (or decrypted plaintext, raw) goes to standard output.
func kmsFieldCmd(op string) func([]string) error {
	usage := map[string]string{
		"encrypt": "allsource kms encrypt -key K -field F [-tenant T] [PLAINTEXT|-]   (prints the ciphertext)",
		"decrypt": "allsource kms decrypt -field F [-tenant T] [-key K] [CIPHERTEXT|-]   (prints the plaintext)",
		"rewrap":  "allsource kms rewrap -field F [-tenant T] [-key K] [CIPHERTEXT|-]   (prints the ciphertext under the newest version)",
		"datakey": "allsource kms datakey -key K -field F [-tenant T]   (prints the data key, base64, and its ciphertext)",
	}[op]
	return func(args []string) error {
		fs := flag.NewFlagSet("kms "+op, flag.ContinueOnError)
		c := clientFlags(fs)
		key := fs.String("key", "", "KMS key name")
		field := fs.String("field", "", "field name bound into the ciphertext (e.g. email)")
		tenant := fs.String("tenant", "", "tenant bound into the ciphertext (default: the credential's tenant)")
		b64in := fs.Bool("base64", false, "the plaintext argument (encrypt) is base64, and decrypt prints base64")
		pos, err := parseWith(fs, args)
		if err != nil {
			return err
		}
		if len(pos) > 1 || (op == "datakey" && len(pos) != 0) || ((op == "encrypt" || op == "datakey") && *key == "") {
			return fmt.Errorf("usage: %s", usage)
		}
		body := map[string]any{"context": map[string]string{"tenant": *tenant, "field": *field}}
		if *key != "" {
			body["key"] = *key
		}
		if op != "datakey" {
			var in string
			if len(pos) == 1 && pos[0] != "-" {
				in = pos[0]
			} else {
				b, err := io.ReadAll(io.LimitReader(bufio.NewReader(os.Stdin), 1<<20))
				if err != nil {
					return err
				}
				in = string(b)
				if op != "encrypt" {
					in = strings.TrimSpace(in)
				}
			}
			switch {
			case op != "encrypt":
				body["ciphertext"] = in
			case *b64in:
				if _, err := base64.StdEncoding.DecodeString(in); err != nil {
					return errors.New("-base64: the plaintext is not standard base64")
				}
				body["plaintext"] = in
			default:
				body["plaintext"] = base64.StdEncoding.EncodeToString([]byte(in))
			}
		}
		var out struct {
			Ciphertext string `json:"ciphertext"`
			Plaintext  string `json:"plaintext"`
			Key        string `json:"key"`
			KeyVersion int    `json:"key_version"`
		}
		if err := c.do("POST", "/v1/kms/"+op, body, &out); err != nil {
			return err
		}
		if c.asJSON {
			return show(out)
		}
		switch op {
		case "decrypt":
			if *b64in {
				fmt.Println(out.Plaintext)
				return nil
			}
			pt, err := base64.StdEncoding.DecodeString(out.Plaintext)
			if err != nil {
				return err
			}
			_, err = os.Stdout.Write(pt)
			return err
		case "datakey":
			fmt.Printf("plaintext_key: %s\nciphertext:    %s\n", out.Plaintext, out.Ciphertext)
		default:
			fmt.Println(out.Ciphertext)
		}
		return nil
	}
}
