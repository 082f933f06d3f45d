package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// client is the admin CLI's view of the HTTP API.
type client struct {
	addr   string
	token  string
	asJSON bool
	http   *http.Client
}

func clientFlags(fs *flag.FlagSet) *client {
	c := &client{http: &http.Client{Timeout: 60 * time.Second}}
	fs.StringVar(&c.addr, "addr", "http://127.0.0.1:8080", "server API address")
	fs.StringVar(&c.token, "token", savedToken(), "credential (operator token, JWT or API key; default: the token saved by 'allsource login -save')")
	fs.BoolVar(&c.asJSON, "json", false, "print raw JSON")
	return c
}

// APIError is an error answer from the server.
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string { return fmt.Sprintf("%s (%d): %s", e.Code, e.Status, e.Message) }

func (c *client) url(path string) string {
	a := c.addr
	if !strings.Contains(a, "://") {
		a = "http://" + a
	}
	return strings.TrimRight(a, "/") + path
}

// do sends a request and decodes a JSON answer into out (if non-nil).
func (c *client) do(method, path string, body any, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.url(path), rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return decodeResponse(resp, out)
}

func decodeResponse(resp *http.Response, out any) error {
	if resp.StatusCode >= 300 {
		var e struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if json.Unmarshal(b, &e) != nil || e.Error.Code == "" {
			return &APIError{Status: resp.StatusCode, Code: "http_error", Message: strings.TrimSpace(string(b))}
		}
		return &APIError{Status: resp.StatusCode, Code: e.Error.Code, Message: e.Error.Message}
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// show prints v as indented JSON (the --json output, and the default for
// records without a table form).
func show(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// fetch runs one request. With -json it prints the server's answer as it
// came (shown is true); otherwise it decodes the answer into out for the
// caller's table, so -json never drops what that table leaves out.
func (c *client) fetch(method, path string, body, out any) (shown bool, err error) {
	var raw json.RawMessage
	if err := c.do(method, path, body, &raw); err != nil {
		return false, err
	}
	if c.asJSON {
		return true, show(raw)
	}
	return false, json.Unmarshal(raw, out)
}

// table prints rows under a header.
func table(header []string, rows [][]string) {
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	tw.Flush()
}

// sub dispatches `allsource <group> <sub> …`.
func sub(group string, args []string, subs map[string]func(args []string) error) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		names := make([]string, 0, len(subs))
		for k := range subs {
			names = append(names, k)
		}
		sort.Strings(names)
		fmt.Fprintf(os.Stderr, "usage: allsource %s <%s> [flags] [args]\n", group, strings.Join(names, "|"))
		if len(args) == 0 {
			return errors.New("missing subcommand")
		}
		return nil
	}
	fn, ok := subs[args[0]]
	if !ok {
		return fmt.Errorf("unknown subcommand %q", args[0])
	}
	return fn(args[1:])
}

// parseWith parses flags that may come before or after positional arguments.
func parseWith(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := parseFlags(fs, args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

func needArgs(pos []string, n int, usage string) error {
	if len(pos) != n {
		return fmt.Errorf("usage: %s", usage)
	}
	return nil
}

func runTenant(args []string) error {
	type tenant struct {
		ID, Name, Tier, Status string
		CreatedAt              time.Time `json:"created_at"`
	}
	printTenants := func(c *client, ts []json.RawMessage) error {
		if c.asJSON {
			return show(ts)
		}
		rows := [][]string{}
		for _, raw := range ts {
			var t tenant
			_ = json.Unmarshal(raw, &t)
			rows = append(rows, []string{t.ID, t.Name, t.Tier, t.Status, t.CreatedAt.Format(time.RFC3339)})
		}
		table([]string{"ID", "NAME", "TIER", "STATUS", "CREATED"}, rows)
		return nil
	}
	one := func(method, suffix string, body func(fs *flag.FlagSet) func() any, usage string) func([]string) error {
		return func(args []string) error {
			fs := flag.NewFlagSet("tenant", flag.ContinueOnError)
			c := clientFlags(fs)
			var mk func() any
			if body != nil {
				mk = body(fs)
			}
			pos, err := parseWith(fs, args)
			if err != nil {
				return err
			}
			if err := needArgs(pos, 1, usage); err != nil {
				return err
			}
			var b any
			if mk != nil {
				b = mk()
			}
			var out json.RawMessage
			if err := c.do(method, "/v1/tenants/"+url.PathEscape(pos[0])+suffix, b, &out); err != nil {
				return err
			}
			if out == nil {
				fmt.Println("ok")
				return nil
			}
			if c.asJSON {
				return show(out)
			}
			return printTenants(c, []json.RawMessage{out})
		}
	}
	return sub("tenant", args, map[string]func([]string) error{
		"create": func(args []string) error {
			fs := flag.NewFlagSet("tenant create", flag.ContinueOnError)
			c := clientFlags(fs)
			name := fs.String("name", "", "display name")
			tier := fs.String("tier", "free", "free, professional, unlimited or dev")
			pos, err := parseWith(fs, args)
			if err != nil {
				return err
			}
			if err := needArgs(pos, 1, "allsource tenant create ID [-name N] [-tier T]"); err != nil {
				return err
			}
			var out json.RawMessage
			if err := c.do("POST", "/v1/tenants", map[string]string{"id": pos[0], "name": *name, "tier": *tier}, &out); err != nil {
				return err
			}
			if c.asJSON {
				return show(out)
			}
			return printTenants(c, []json.RawMessage{out})
		},
		"list": func(args []string) error {
			fs := flag.NewFlagSet("tenant list", flag.ContinueOnError)
			c := clientFlags(fs)
			if _, err := parseWith(fs, args); err != nil {
				return err
			}
			var all []json.RawMessage
			cursor := ""
			for {
				var page struct {
					Tenants    []json.RawMessage `json:"tenants"`
					NextCursor string            `json:"next_cursor"`
				}
				if err := c.do("GET", "/v1/tenants?limit=1000&cursor="+url.QueryEscape(cursor), nil, &page); err != nil {
					return err
				}
				all = append(all, page.Tenants...)
				if cursor = page.NextCursor; cursor == "" {
					break
				}
			}
			return printTenants(c, all)
		},
		"get":      one("GET", "", nil, "allsource tenant get ID"),
		"suspend":  one("POST", "/suspend", nil, "allsource tenant suspend ID"),
		"activate": one("POST", "/activate", nil, "allsource tenant activate ID"),
		"delete":   one("DELETE", "", nil, "allsource tenant delete ID"),
		"update": one("PATCH", "", func(fs *flag.FlagSet) func() any {
			name := fs.String("name", "", "new display name")
			tier := fs.String("tier", "", "new tier")
			return func() any {
				m := map[string]string{}
				if *name != "" {
					m["name"] = *name
				}
				if *tier != "" {
					m["tier"] = *tier
				}
				return m
			}
		}, "allsource tenant update ID [-name N] [-tier T]"),
	})
}

func runLimit(args []string) error {
	return sub("limit", args, map[string]func([]string) error{
		"get": func(args []string) error {
			fs := flag.NewFlagSet("limit get", flag.ContinueOnError)
			c := clientFlags(fs)
			pos, err := parseWith(fs, args)
			if err == nil {
				err = needArgs(pos, 1, "allsource limit get TENANT")
			}
			if err != nil {
				return err
			}
			var out json.RawMessage
			if err := c.do("GET", "/v1/tenants/"+url.PathEscape(pos[0])+"/rate-limit", nil, &out); err != nil {
				return err
			}
			return show(out)
		},
		"set": func(args []string) error {
			fs := flag.NewFlagSet("limit set", flag.ContinueOnError)
			c := clientFlags(fs)
			tier := fs.String("tier", "", "a predefined tier (free, professional, unlimited, dev)")
			rpm := fs.Int("rpm", 0, "requests per minute")
			burst := fs.Int("burst", 0, "burst size")
			minRPM := fs.Int("min-rpm", 0, "adaptive limits: the lowest requests per minute (with -max-rpm)")
			maxRPM := fs.Int("max-rpm", 0, "adaptive limits: the highest requests per minute (with -min-rpm)")
			pos, err := parseWith(fs, args)
			if err == nil {
				err = needArgs(pos, 1, "allsource limit set TENANT (-tier T | -rpm N [-burst B]) [-min-rpm N -max-rpm M]")
			}
			if err != nil {
				return err
			}
			body := map[string]any{}
			if *tier != "" {
				body["tier"] = *tier
			}
			if *rpm != 0 {
				body["requests_per_minute"] = *rpm
			}
			if *burst != 0 {
				body["burst"] = *burst
			}
			if *minRPM != 0 || *maxRPM != 0 {
				body["min_requests_per_minute"], body["max_requests_per_minute"] = *minRPM, *maxRPM
			}
			var out json.RawMessage
			if err := c.do("PUT", "/v1/tenants/"+url.PathEscape(pos[0])+"/rate-limit", body, &out); err != nil {
				return err
			}
			return show(out)
		},
	})
}

func runAudit(args []string) error {
	query := func(args []string, follow bool) error {
		fs := flag.NewFlagSet("audit query", flag.ContinueOnError)
		c := clientFlags(fs)
		action := fs.String("action", "", "only this action")
		actor := fs.String("actor", "", "only this actor (id or name)")
		since := fs.String("since", "", "RFC 3339 start time")
		until := fs.String("until", "", "RFC 3339 end time")
		limit := fs.Int("limit", 100, "entries per page")
		cluster := fs.Bool("cluster", false, "the cluster's own chain (operator): no TENANT")
		pos, err := parseWith(fs, args)
		if err == nil && !*cluster {
			err = needArgs(pos, 1, "allsource audit query|tail TENANT|-cluster [-action A] [-actor X] [-since T] [-until T]")
		}
		if err != nil {
			return err
		}
		path := "/v1/audit?"
		if !*cluster {
			path = "/v1/tenants/" + url.PathEscape(pos[0]) + "/audit?"
		}
		cursor := ""
		for {
			q := url.Values{"action": {*action}, "actor": {*actor}, "since": {*since}, "until": {*until},
				"limit": {fmt.Sprint(*limit)}, "cursor": {cursor}}
			for k, v := range q {
				if v[0] == "" {
					delete(q, k)
				}
			}
			var page struct {
				Entries []struct {
					Seq      uint64    `json:"seq"`
					Time     time.Time `json:"time"`
					Action   string    `json:"action"`
					Outcome  string    `json:"outcome"`
					Resource string    `json:"resource"`
					IP       string    `json:"ip"`
					Actor    struct{ Kind, ID, Name string }
				} `json:"entries"`
				NextCursor string `json:"next_cursor"`
			}
			var raw json.RawMessage
			if err := c.do("GET", path+q.Encode(), nil, &raw); err != nil {
				return err
			}
			if c.asJSON {
				if err := show(raw); err != nil {
					return err
				}
			}
			_ = json.Unmarshal(raw, &page)
			if !c.asJSON {
				rows := [][]string{}
				for _, e := range page.Entries {
					rows = append(rows, []string{fmt.Sprint(e.Seq), e.Time.Format(time.RFC3339), e.Action, e.Outcome,
						e.Actor.Kind + ":" + firstNonEmpty(e.Actor.Name, e.Actor.ID), e.Resource, e.IP})
				}
				if len(rows) > 0 {
					table([]string{"SEQ", "TIME", "ACTION", "OUTCOME", "ACTOR", "RESOURCE", "IP"}, rows)
				}
			}
			if len(page.Entries) > 0 {
				cursor = fmt.Sprint(page.Entries[len(page.Entries)-1].Seq)
			}
			if page.NextCursor != "" {
				cursor = page.NextCursor
				continue
			}
			if !follow {
				return nil
			}
			time.Sleep(time.Second) // tail -f: poll for new entries
		}
	}
	return sub("audit", args, map[string]func([]string) error{
		"query": func(args []string) error { return query(args, false) },
		"tail":  func(args []string) error { return query(args, true) },
		"verify": func(args []string) error {
			fs := flag.NewFlagSet("audit verify", flag.ContinueOnError)
			c := clientFlags(fs)
			tenant := fs.String("tenant", "", "verify one tenant's chain only")
			if _, err := parseWith(fs, args); err != nil {
				return err
			}
			var out json.RawMessage
			err := c.do("GET", "/v1/audit/verify?tenant="+url.QueryEscape(*tenant), nil, &out)
			var ae *APIError
			if errors.As(err, &ae) && ae.Status == http.StatusConflict {
				return errors.New("audit chain verification FAILED (run with -json for details)")
			}
			if err != nil {
				return err
			}
			if c.asJSON {
				return show(out)
			}
			fmt.Println("audit chains verify: ok")
			return nil
		},
		"retention": func(args []string) error {
			fs := flag.NewFlagSet("audit retention", flag.ContinueOnError)
			c := clientFlags(fs)
			older := fs.String("older-than", "", "drop entries older than this duration, e.g. 2160h")
			if _, err := parseWith(fs, args); err != nil {
				return err
			}
			var out json.RawMessage
			if err := c.do("POST", "/v1/audit/retention", map[string]string{"older_than": *older}, &out); err != nil {
				return err
			}
			return show(out)
		},
	})
}

func firstNonEmpty(a ...string) string {
	for _, s := range a {
		if s != "" {
			return s
		}
	}
	return ""
}

func runCluster(args []string) error {
	return sub("cluster", args, map[string]func([]string) error{
		"members": func(args []string) error {
			fs := flag.NewFlagSet("cluster members", flag.ContinueOnError)
			c := clientFlags(fs)
			if _, err := parseWith(fs, args); err != nil {
				return err
			}
			var out struct {
				Servers []struct {
					ID       string `json:"id"`
					RaftAddr string `json:"raft_addr"`
					HTTPAddr string `json:"http_addr"`
					Suffrage string `json:"suffrage"`
					Leader   bool   `json:"leader"`
					Alive    *bool  `json:"alive"`
				} `json:"servers"`
				Gossip json.RawMessage `json:"gossip"`
			}
			var raw json.RawMessage
			if err := c.do("GET", "/v1/cluster/members", nil, &raw); err != nil {
				return err
			}
			if c.asJSON {
				return show(raw)
			}
			_ = json.Unmarshal(raw, &out)
			rows := [][]string{}
			for _, s := range out.Servers {
				role, alive := "follower", "-"
				if s.Leader {
					role = "leader"
				}
				if s.Alive != nil {
					alive = fmt.Sprint(*s.Alive)
				}
				rows = append(rows, []string{s.ID, role, s.Suffrage, s.RaftAddr, s.HTTPAddr, alive})
			}
			table([]string{"ID", "ROLE", "SUFFRAGE", "RAFT", "HTTP", "GOSSIP-ALIVE"}, rows)
			return nil
		},
		"join": func(args []string) error {
			fs := flag.NewFlagSet("cluster join", flag.ContinueOnError)
			c := clientFlags(fs)
			id := fs.String("node-id", "", "id of the server to admit")
			raftAddr := fs.String("raft-addr", "", "its raft address")
			httpAddr := fs.String("http-addr", "", "its HTTP address")
			if _, err := parseWith(fs, args); err != nil {
				return err
			}
			var out json.RawMessage
			if err := c.do("POST", "/v1/cluster/join", map[string]string{"node_id": *id, "raft_addr": *raftAddr, "http_addr": *httpAddr}, &out); err != nil {
				return err
			}
			return show(out)
		},
		"remove": func(args []string) error {
			fs := flag.NewFlagSet("cluster remove", flag.ContinueOnError)
			c := clientFlags(fs)
			pos, err := parseWith(fs, args)
			if err == nil {
				err = needArgs(pos, 1, "allsource cluster remove NODE_ID")
			}
			if err != nil {
				return err
			}
			if err := c.do("DELETE", "/v1/cluster/members/"+url.PathEscape(pos[0]), nil, nil); err != nil {
				return err
			}
			fmt.Println("removed", pos[0])
			return nil
		},
		"transfer": func(args []string) error {
			fs := flag.NewFlagSet("cluster transfer", flag.ContinueOnError)
			c := clientFlags(fs)
			pos, err := parseWith(fs, args)
			if err != nil {
				return err
			}
			body := map[string]string{}
			if len(pos) == 1 {
				body["id"] = pos[0]
			}
			var out json.RawMessage
			if err := c.do("POST", "/v1/cluster/leadership-transfer", body, &out); err != nil {
				return err
			}
			return show(out)
		},
	})
}

func runSnapshot(args []string) error {
	return sub("snapshot", args, map[string]func([]string) error{
		"save": func(args []string) error {
			fs := flag.NewFlagSet("snapshot save", flag.ContinueOnError)
			c := clientFlags(fs)
			pos, err := parseWith(fs, args)
			if err == nil {
				err = needArgs(pos, 1, "allsource snapshot save FILE")
			}
			if err != nil {
				return err
			}
			req, _ := http.NewRequest("GET", c.url("/v1/cluster/snapshot"), nil)
			if c.token != "" {
				req.Header.Set("Authorization", "Bearer "+c.token)
			}
			c.http.Timeout = 0
			resp, err := c.http.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if err := decodeResponse(resp, nil); err != nil || resp.StatusCode != 200 {
				return err
			}
			tmp := pos[0] + ".partial"
			f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
			if err != nil {
				return err
			}
			n, err := io.Copy(f, resp.Body)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				os.Remove(tmp)
				return err
			}
			if err := os.Rename(tmp, pos[0]); err != nil {
				return err
			}
			fmt.Printf("saved snapshot at index %s (%d bytes) to %s\n", resp.Header.Get("X-Raft-Index"), n, pos[0])
			return nil
		},
		"restore": func(args []string) error {
			fs := flag.NewFlagSet("snapshot restore", flag.ContinueOnError)
			c := clientFlags(fs)
			pos, err := parseWith(fs, args)
			if err == nil {
				err = needArgs(pos, 1, "allsource snapshot restore FILE")
			}
			if err != nil {
				return err
			}
			f, err := os.Open(pos[0])
			if err != nil {
				return err
			}
			defer f.Close()
			req, _ := http.NewRequest("PUT", c.url("/v1/cluster/snapshot"), f)
			req.Header.Set("Content-Type", "application/octet-stream")
			if c.token != "" {
				req.Header.Set("Authorization", "Bearer "+c.token)
			}
			c.http.Timeout = 0
			resp, err := c.http.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			var out json.RawMessage
			if err := decodeResponse(resp, &out); err != nil {
				return err
			}
			return show(out)
		},
	})
}
