package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// The threat-detection commands: anomaly, threat-policy, mfa.

// scopePath is /v1/tenants/T for a tenant, /v1 for the cluster chain.
func scopePath(tenant string) string {
	if tenant == "" {
		return "/v1"
	}
	return "/v1/tenants/" + url.PathEscape(tenant)
}

func runAnomaly(args []string) error {
	type anomaly struct {
		ID         string    `json:"id"`
		Kind       string    `json:"kind"`
		Score      float64   `json:"score"`
		Level      string    `json:"level"`
		Summary    string    `json:"summary"`
		DetectedAt time.Time `json:"detected_at"`
		UndoneAt   time.Time `json:"undone_at"`
		Actions    []struct {
			Kind    string `json:"kind"`
			Target  string `json:"target"`
			Applied bool   `json:"applied"`
			Undone  bool   `json:"undone"`
		} `json:"actions"`
	}
	return sub("anomaly", args, map[string]func([]string) error{
		"list": func(args []string) error {
			fs := flag.NewFlagSet("anomaly list", flag.ContinueOnError)
			c := clientFlags(fs)
			tenant := fs.String("tenant", "", "tenant id (empty: the cluster chain, operator only)")
			kind := fs.String("kind", "", "only this kind (brute_force, credential_stuffing, unusual_access, privilege_escalation, data_exfiltration, velocity)")
			since := fs.Duration("since", 0, "only anomalies detected within this long")
			if _, err := parseWith(fs, args); err != nil {
				return err
			}
			q := url.Values{}
			if *kind != "" {
				q.Set("kind", *kind)
			}
			if *since > 0 {
				q.Set("since", time.Now().Add(-*since).UTC().Format(time.RFC3339))
			}
			var page struct {
				Anomalies []anomaly `json:"anomalies"`
			}
			var raw json.RawMessage
			if err := c.do("GET", scopePath(*tenant)+"/anomalies?"+q.Encode(), nil, &raw); err != nil {
				return err
			}
			if c.asJSON {
				return show(raw)
			}
			if err := json.Unmarshal(raw, &page); err != nil {
				return err
			}
			var rows [][]string
			for _, a := range page.Anomalies {
				var acts []string
				for _, r := range a.Actions {
					s := r.Kind
					switch {
					case r.Undone:
						s += "(undone)"
					case !r.Applied:
						s += "(not applied)"
					}
					acts = append(acts, s)
				}
				state := ""
				if !a.UndoneAt.IsZero() {
					state = "undone"
				}
				rows = append(rows, []string{a.ID, a.DetectedAt.Local().Format(time.DateTime), a.Kind, fmt.Sprintf("%.2f", a.Score),
					a.Level, strings.Join(acts, ","), state, a.Summary})
			}
			table([]string{"ID", "DETECTED", "KIND", "SCORE", "LEVEL", "ACTIONS", "STATE", "SUMMARY"}, rows)
			return nil
		},
		"get":  oneAnomaly("get", "GET", ""),
		"undo": oneAnomaly("undo", "POST", "/undo"),
	})
}

// oneAnomaly is "anomaly get|undo [-tenant T] ID": one request on one anomaly.
func oneAnomaly(name, method, suffix string) func([]string) error {
	return func(args []string) error {
		fs := flag.NewFlagSet("anomaly "+name, flag.ContinueOnError)
		c := clientFlags(fs)
		tenant := fs.String("tenant", "", "tenant id (empty: the cluster chain)")
		pos, err := parseWith(fs, args)
		if err == nil {
			err = needArgs(pos, 1, "allsource anomaly "+name+" [-tenant T] ID")
		}
		if err != nil {
			return err
		}
		return simple(c, method, scopePath(*tenant)+"/anomalies/"+url.PathEscape(pos[0])+suffix, nil)
	}
}

func runThreatPolicy(args []string) error {
	return sub("threat-policy", args, map[string]func([]string) error{
		"get": func(args []string) error {
			fs := flag.NewFlagSet("threat-policy get", flag.ContinueOnError)
			c := clientFlags(fs)
			tenant := fs.String("tenant", "", "tenant id (empty: the cluster's policy)")
			if _, err := parseWith(fs, args); err != nil {
				return err
			}
			return simple(c, "GET", scopePath(*tenant)+"/threat-policy", nil)
		},
		"set": func(args []string) error {
			fs := flag.NewFlagSet("threat-policy set", flag.ContinueOnError)
			c := clientFlags(fs)
			tenant := fs.String("tenant", "", "tenant id (empty: the cluster's policy)")
			auto := fs.String("auto-respond", "", "true or false: act automatically, or only record and alert")
			maxLevel := fs.String("max-level", "", "highest level acted upon: monitor, alert, require_mfa, block, revoke_access")
			lockFor := fs.String("lock-user-for", "", "how long a block locks a user (e.g. 15m)")
			blockFor := fs.String("block-ip-for", "", "how long a block bans an address (e.g. 1h)")
			scope := fs.String("block-ip-scope", "", "tenant or global (global: operator only)")
			mfa := fs.String("require-mfa-for-admins", "", "true or false: admins log in with a second factor")
			if _, err := parseWith(fs, args); err != nil {
				return err
			}
			body := map[string]any{}
			for k, v := range map[string]string{"max_level": *maxLevel, "lock_user_for": *lockFor, "block_ip_for": *blockFor, "block_ip_scope": *scope} {
				if v != "" {
					body[k] = v
				}
			}
			for k, v := range map[string]string{"auto_respond": *auto, "require_mfa_for_admins": *mfa} {
				switch v {
				case "":
				case "true", "false":
					body[k] = v == "true"
				default:
					return fmt.Errorf("-%s must be true or false", strings.ReplaceAll(k, "_", "-"))
				}
			}
			return simple(c, "PUT", scopePath(*tenant)+"/threat-policy", body)
		},
	})
}

func runMFA(args []string) error {
	mfaCmd := func(name, method, suffix string, withCode bool) func([]string) error {
		return func(args []string) error {
			fs := flag.NewFlagSet("mfa "+name, flag.ContinueOnError)
			c := clientFlags(fs)
			code := fs.String("code", "", "a TOTP code from the authenticator")
			pos, err := parseWith(fs, args)
			if err == nil {
				err = needArgs(pos, 2, "allsource mfa "+name+" TENANT USER_ID")
			}
			if err != nil {
				return err
			}
			var body any
			if withCode {
				body = map[string]string{}
				if *code != "" {
					body = map[string]string{"code": *code}
				}
			}
			var out json.RawMessage
			path := "/v1/tenants/" + url.PathEscape(pos[0]) + "/users/" + url.PathEscape(pos[1]) + "/mfa" + suffix
			if err := c.do(method, path, body, &out); err != nil {
				return err
			}
			if len(out) == 0 {
				fmt.Println("done")
				return nil
			}
			return show(out)
		}
	}
	return sub("mfa", args, map[string]func([]string) error{
		"status":   mfaCmd("status", "GET", "", false),
		"enroll":   mfaCmd("enroll", "POST", "/enroll", false),
		"activate": mfaCmd("activate", "POST", "/activate", true),
		"disable":  mfaCmd("disable", "POST", "/disable", true),
	})
}
