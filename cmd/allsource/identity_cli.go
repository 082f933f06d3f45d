package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The identity commands: login, user, key, ip, signing-key.

// tokenFile is where `allsource login -save` keeps the access token.
func tokenFile() string {
	dir, err := os.UserConfigDir()
	if err != nil {
		return ""
	}
	return filepath.Join(dir, "allsource", "token")
}

// savedToken returns the token saved by `allsource login -save`, if any. The
// file must not be readable by others.
func savedToken() string {
	p := tokenFile()
	if p == "" {
		return ""
	}
	st, err := os.Stat(p)
	if err != nil || st.Mode().Perm()&0o077 != 0 {
		return ""
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// readPassword takes the password from the flag (or ALLSOURCE_PASSWORD), else
// one line of standard input.
func readPassword(flagValue, prompt string) (string, error) {
	if flagValue != "" {
		return flagValue, nil
	}
	fmt.Fprint(os.Stderr, prompt)
	line, err := bufio.NewReader(os.Stdin).ReadString('\n')
	if err != nil && line == "" {
		return "", errors.New("no password given (use -password, ALLSOURCE_PASSWORD or standard input)")
	}
	return strings.TrimRight(line, "\r\n"), nil
}

func runLogin(args []string) error {
	fs := flag.NewFlagSet("login", flag.ContinueOnError)
	c := clientFlags(fs)
	tenant := fs.String("tenant", "", "tenant id")
	user := fs.String("username", "", "username")
	password := fs.String("password", "", "password (default: read from standard input)")
	totp := fs.String("totp", "", "TOTP code, when the account has a second factor")
	recovery := fs.String("recovery-code", "", "one of the account's recovery codes, instead of -totp (each works once)")
	save := fs.Bool("save", false, "save the access token to "+tokenFile()+" (mode 0600) for later commands")
	pos, err := parseWith(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 2 && *tenant == "" && *user == "" {
		*tenant, *user = pos[0], pos[1]
	} else if len(pos) != 0 || *tenant == "" || *user == "" {
		return errors.New("usage: allsource login -tenant T -username U [-password P] [-totp CODE | -recovery-code CODE] [-save]")
	}
	if *totp != "" && *recovery != "" {
		return errors.New("-totp and -recovery-code: give one second factor, not both")
	}
	pw, err := readPassword(*password, "password: ")
	if err != nil {
		return err
	}
	body := map[string]string{"tenant": *tenant, "username": *user, "password": pw}
	if *totp != "" {
		body["totp"] = *totp
	}
	if *recovery != "" {
		body["recovery_code"] = *recovery
	}
	var raw json.RawMessage
	c.token = ""
	if err := c.do("POST", "/v1/auth/login", body, &raw); err != nil {
		return err
	}
	var out struct {
		AccessToken  string `json:"access_token"`
		RefreshToken string `json:"refresh_token"`
		ExpiresIn    int64  `json:"expires_in"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return fmt.Errorf("login answer: %w", err)
	}
	if *save {
		p := tokenFile()
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(out.AccessToken+"\n"), 0o600); err != nil {
			return err
		}
		if err := os.Chmod(p, 0o600); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "token saved to %s (expires in %s)\n", p, time.Duration(out.ExpiresIn)*time.Second)
		return nil
	}
	if c.asJSON {
		return show(raw)
	}
	fmt.Println(out.AccessToken)
	fmt.Fprintf(os.Stderr, "expires in %s; refresh token: %s\nuse it as: export ALLSOURCE_TOKEN=<the token above>\n",
		time.Duration(out.ExpiresIn)*time.Second, out.RefreshToken)
	return nil
}

// simple runs one request and prints the JSON answer (or "ok").
func simple(c *client, method, path string, body any) error {
	var out json.RawMessage
	if err := c.do(method, path, body, &out); err != nil {
		return err
	}
	if out == nil {
		fmt.Println("ok")
		return nil
	}
	return show(out)
}

// groupCmd builds a subcommand with client flags, a tenant flag and n positional arguments.
func groupCmd(name, usage string, n int, needTenant bool, setup func(fs *flag.FlagSet) func(c *client, tenant string, pos []string) error) func([]string) error {
	return func(args []string) error {
		fs := flag.NewFlagSet(name, flag.ContinueOnError)
		c := clientFlags(fs)
		tenant := fs.String("tenant", "", "tenant id")
		run := setup(fs)
		pos, err := parseWith(fs, args)
		if err == nil {
			err = needArgs(pos, n, usage)
		}
		if err == nil && needTenant && *tenant == "" {
			err = fmt.Errorf("usage: %s (-tenant is required)", usage)
		}
		if err != nil {
			return err
		}
		return run(c, *tenant, pos)
	}
}

func tpath(tenant, suffix string) string { return "/v1/tenants/" + url.PathEscape(tenant) + suffix }

func runUser(args []string) error {
	return sub("user", args, map[string]func([]string) error{
		"create": groupCmd("user create", "allsource user create -tenant T USERNAME [-role R] [-email E] [-password P]", 1, true,
			func(fs *flag.FlagSet) func(*client, string, []string) error {
				role := fs.String("role", "readonly", "admin, developer, readonly or serviceaccount")
				email := fs.String("email", "", "e-mail address")
				password := fs.String("password", "", "password (default: read from standard input)")
				return func(c *client, t string, pos []string) error {
					pw, err := readPassword(*password, "new user's password: ")
					if err != nil {
						return err
					}
					return simple(c, "POST", tpath(t, "/users"), map[string]string{"username": pos[0], "password": pw, "email": *email, "role": *role})
				}
			}),
		"list": groupCmd("user list", "allsource user list -tenant T", 0, true, func(fs *flag.FlagSet) func(*client, string, []string) error {
			return func(c *client, t string, _ []string) error {
				var page struct {
					Users []struct {
						ID, Username, Email string
						Role                string
						Disabled, Locked    bool
					} `json:"users"`
				}
				if shown, err := c.fetch("GET", tpath(t, "/users?limit=1000"), nil, &page); err != nil || shown {
					return err
				}
				rows := [][]string{}
				for _, u := range page.Users {
					rows = append(rows, []string{u.ID, u.Username, u.Email, u.Role, fmt.Sprint(u.Disabled), fmt.Sprint(u.Locked)})
				}
				table([]string{"ID", "USERNAME", "EMAIL", "ROLE", "DISABLED", "LOCKED"}, rows)
				return nil
			}
		}),
		"get": groupCmd("user get", "allsource user get -tenant T USER", 1, true, func(fs *flag.FlagSet) func(*client, string, []string) error {
			return func(c *client, t string, pos []string) error {
				return simple(c, "GET", tpath(t, "/users/"+url.PathEscape(pos[0])), nil)
			}
		}),
		"update": groupCmd("user update", "allsource user update -tenant T USER [-role R] [-disabled true|false] [-email E] [-unlock]", 1, true,
			func(fs *flag.FlagSet) func(*client, string, []string) error {
				role := fs.String("role", "", "new role")
				disabled := fs.String("disabled", "", "true or false")
				email := fs.String("email", "", "new e-mail address")
				unlock := fs.Bool("unlock", false, "clear a lockout")
				return func(c *client, t string, pos []string) error {
					body := map[string]any{}
					if *role != "" {
						body["role"] = *role
					}
					if *disabled != "" {
						body["disabled"] = *disabled == "true"
					}
					if *email != "" {
						body["email"] = *email
					}
					if *unlock {
						body["unlock"] = true
					}
					return simple(c, "PATCH", tpath(t, "/users/"+url.PathEscape(pos[0])), body)
				}
			}),
		"delete": groupCmd("user delete", "allsource user delete -tenant T USER", 1, true, func(fs *flag.FlagSet) func(*client, string, []string) error {
			return func(c *client, t string, pos []string) error {
				return simple(c, "DELETE", tpath(t, "/users/"+url.PathEscape(pos[0])), nil)
			}
		}),
		"passwd": groupCmd("user passwd", "allsource user passwd -tenant T USER [-current P] [-new P]", 1, true,
			func(fs *flag.FlagSet) func(*client, string, []string) error {
				cur := fs.String("current", "", "current password (when changing your own)")
				nw := fs.String("new", "", "new password (default: read from standard input)")
				return func(c *client, t string, pos []string) error {
					pw, err := readPassword(*nw, "new password: ")
					if err != nil {
						return err
					}
					body := map[string]string{"new_password": pw}
					if *cur != "" {
						body["current_password"] = *cur
					}
					return simple(c, "POST", tpath(t, "/users/"+url.PathEscape(pos[0])+"/password"), body)
				}
			}),
	})
}

func runKey(args []string) error {
	return sub("key", args, map[string]func([]string) error{
		"create": groupCmd("key create", "allsource key create -tenant T NAME [-role R] [-expires-in 720h]", 1, true,
			func(fs *flag.FlagSet) func(*client, string, []string) error {
				role := fs.String("role", "", "role of the key, at most yours (default: yours)")
				exp := fs.String("expires-in", "", "lifetime such as 720h (default: none)")
				return func(c *client, t string, pos []string) error {
					var out struct {
						ID, Key, Role string
						ExpiresAt     string `json:"expires_at"`
					}
					body := map[string]string{"name": pos[0], "role": *role, "expires_in": *exp}
					if shown, err := c.fetch("POST", tpath(t, "/api-keys"), body, &out); err != nil || shown {
						return err
					}
					fmt.Println(out.Key)
					fmt.Fprintf(os.Stderr, "key %s (role %s) — shown once, store it now\n", out.ID, out.Role)
					return nil
				}
			}),
		"list": groupCmd("key list", "allsource key list -tenant T", 0, true, func(fs *flag.FlagSet) func(*client, string, []string) error {
			return func(c *client, t string, _ []string) error {
				var page struct {
					Keys []struct {
						ID, Name, Role string
						Expires        string `json:"expires_at"`
						Revoked        string `json:"revoked_at"`
						Last           string `json:"last_used"`
						Uses           uint64
					} `json:"api_keys"`
				}
				if shown, err := c.fetch("GET", tpath(t, "/api-keys?limit=1000"), nil, &page); err != nil || shown {
					return err
				}
				rows := [][]string{}
				for _, k := range page.Keys {
					rows = append(rows, []string{k.ID, k.Name, k.Role, k.Expires, k.Revoked, k.Last, fmt.Sprint(k.Uses)})
				}
				table([]string{"ID", "NAME", "ROLE", "EXPIRES", "REVOKED", "LAST USED", "USES"}, rows)
				return nil
			}
		}),
		"revoke": groupCmd("key revoke", "allsource key revoke -tenant T KEY_ID", 1, true, func(fs *flag.FlagSet) func(*client, string, []string) error {
			return func(c *client, t string, pos []string) error {
				return simple(c, "DELETE", tpath(t, "/api-keys/"+url.PathEscape(pos[0])), nil)
			}
		}),
	})
}

// ipPath is the global rules' path without -tenant, the tenant's with it.
func ipPath(tenant, suffix string) string {
	if tenant == "" {
		return "/v1/ip-rules" + suffix
	}
	return tpath(tenant, "/ip-rules"+suffix)
}

func runIP(args []string) error {
	return sub("ip", args, map[string]func([]string) error{
		"list": groupCmd("ip list", "allsource ip list [-tenant T]", 0, false, func(fs *flag.FlagSet) func(*client, string, []string) error {
			return func(c *client, t string, _ []string) error {
				var page struct {
					Rules []struct {
						ID, CIDR, Action, Note string
						ExpiresAt              string `json:"expires_at"`
					} `json:"ip_rules"`
				}
				if shown, err := c.fetch("GET", ipPath(t, ""), nil, &page); err != nil || shown {
					return err
				}
				rows := [][]string{}
				for _, r := range page.Rules {
					rows = append(rows, []string{r.ID, r.CIDR, r.Action, r.ExpiresAt, r.Note})
				}
				table([]string{"ID", "CIDR", "ACTION", "EXPIRES", "NOTE"}, rows)
				return nil
			}
		}),
		"add": groupCmd("ip add", "allsource ip add [-tenant T] CIDR [-action block|allow] [-note N] [-expires-in 24h]", 1, false,
			func(fs *flag.FlagSet) func(*client, string, []string) error {
				action := fs.String("action", "block", "block or allow")
				note := fs.String("note", "", "why")
				exp := fs.String("expires-in", "", "lifetime such as 24h (default: none)")
				return func(c *client, t string, pos []string) error {
					return simple(c, "POST", ipPath(t, ""), map[string]string{"cidr": pos[0], "action": *action, "note": *note, "expires_in": *exp})
				}
			}),
		"remove": groupCmd("ip remove", "allsource ip remove [-tenant T] RULE_ID", 1, false, func(fs *flag.FlagSet) func(*client, string, []string) error {
			return func(c *client, t string, pos []string) error {
				return simple(c, "DELETE", ipPath(t, "/"+url.PathEscape(pos[0])), nil)
			}
		}),
	})
}

func runSigningKey(args []string) error {
	return sub("signing-key", args, map[string]func([]string) error{
		"list": groupCmd("signing-key list", "allsource signing-key list", 0, false, func(fs *flag.FlagSet) func(*client, string, []string) error {
			return func(c *client, _ string, _ []string) error {
				var out struct {
					Keys []struct {
						KID, Alg, State string
						CreatedAt       string `json:"created_at"`
					} `json:"signing_keys"`
				}
				if shown, err := c.fetch("GET", "/v1/signing-keys", nil, &out); err != nil || shown {
					return err
				}
				rows := [][]string{}
				for _, k := range out.Keys {
					rows = append(rows, []string{k.KID, k.Alg, k.State, k.CreatedAt})
				}
				table([]string{"KID", "ALG", "STATE", "CREATED"}, rows)
				return nil
			}
		}),
		"rotate": groupCmd("signing-key rotate", "allsource signing-key rotate", 0, false, func(fs *flag.FlagSet) func(*client, string, []string) error {
			return func(c *client, _ string, _ []string) error { return simple(c, "POST", "/v1/signing-keys/rotate", nil) }
		}),
		"retire": groupCmd("signing-key retire", "allsource signing-key retire KID", 1, false, func(fs *flag.FlagSet) func(*client, string, []string) error {
			return func(c *client, _ string, pos []string) error {
				return simple(c, "POST", "/v1/signing-keys/"+url.PathEscape(pos[0])+"/retire", nil)
			}
		}),
	})
}
