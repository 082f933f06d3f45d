// Command allsource is the one binary of AllSource Guard: `allsource server`
// runs a control-plane server, `allsource edge` an enforcement edge, and the
// other subcommands are the admin CLI, talking to the HTTP API.
package main

import (
	"fmt"
	"os"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

type command struct {
	name, summary string
	run           func(args []string) error
}

func commands() []command {
	return []command{
		{"server", "run a control-plane server (-dev for a single-node dev server)", runServer},
		{"edge", "run an enforcement edge: reverse proxy (-upstream) and forward-auth (/v1/check)", runEdge},
		{"tenant", "manage tenants: create|list|get|update|suspend|activate|delete", runTenant},
		{"login", "log in as a tenant user: prints an access token (or -save it)", runLogin},
		{"user", "tenant users: create|list|get|update|delete|passwd", runUser},
		{"key", "tenant API keys: create|list|revoke", runKey},
		{"ip", "IP rules (global without -tenant): list|add|remove", runIP},
		{"signing-key", "token-signing keys: list|rotate|retire", runSigningKey},
		{"limit", "tenant rate limits: get|set", runLimit},
		{"anomaly", "detected anomalies and their responses: list|get|undo", runAnomaly},
		{"threat-policy", "automatic responses of a tenant (or the cluster): get|set", runThreatPolicy},
		{"mfa", "a user's second factor (TOTP): status|enroll|activate|disable", runMFA},
		{"kms", "keys and field encryption: init-local | key create|list|get|rotate|set|grant | encrypt|decrypt|datakey|rewrap", runKMS},
		{"audit", "audit log: query|tail|verify|retention", runAudit},
		{"cluster", "cluster membership: members|join|remove|transfer", runCluster},
		{"snapshot", "backup and restore: save|restore", runSnapshot},
		{"version", "print the version", func([]string) error { fmt.Println(version); return nil }},
	}
}

func usage() {
	fmt.Fprintf(os.Stderr, "allsource %s — AllSource Guard, a distributed security control plane\n\nusage: allsource <command> [flags]\n\ncommands:\n", version)
	for _, c := range commands() {
		fmt.Fprintf(os.Stderr, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(os.Stderr, "\nRun 'allsource <command> -h' for a command's flags. Every flag also reads ALLSOURCE_<FLAG>.\n")
}

func main() {
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		usage()
		if len(os.Args) < 2 {
			os.Exit(2)
		}
		return
	}
	for _, c := range commands() {
		if c.name == os.Args[1] {
			if err := c.run(os.Args[2:]); err != nil {
				fmt.Fprintf(os.Stderr, "allsource %s: %v\n", c.name, err)
				os.Exit(1)
			}
			return
		}
	}
	fmt.Fprintf(os.Stderr, "allsource: unknown command %q\n\n", os.Args[1])
	usage()
	os.Exit(2)
}
