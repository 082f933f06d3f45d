package fsm

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/allsource/guard/auth"
	"github.com/hashicorp/raft"
)

// chooser is the source of the command generator's choices: math/rand for the
// determinism tests, rapid for the property test.
type chooser interface {
	intn(what string, n int) int
}

type randChooser struct{ r *rand.Rand }

func (c randChooser) intn(_ string, n int) int { return c.r.IntN(n) }

func pick[T any](c chooser, what string, xs ...T) T { return xs[c.intn(what, len(xs))] }

// Pools the generator draws from: valid and invalid values, so that a run
// mixes successes with every kind of business error.
var (
	genTenants    = []string{"acme", "globex", "initech", "umbrella", "ACME", "", "../x"}
	genTiers      = []string{"", "free", "professional", "unlimited", "dev", "gold"}
	genPrincipals = []Principal{opP, opP, sysP, adminOf("acme"), adminOf("globex"), member("acme", auth.RoleReadOnly),
		member("initech", auth.RoleDeveloper), {Kind: PrincipalAPIKey, ID: "k1", Tenant: "umbrella", Role: auth.RoleAdmin}, devP,
		{Kind: PrincipalUser, ID: "nobody", Role: auth.RoleAdmin}}
	genActions = []Action{ActionLoginFailed, ActionLoginSucceeded, ActionAPIKeyUsed, ActionIPBlocked, ""}
)

// genCommand draws one command for entry index i.
func genCommand(c chooser, i uint64) (CommandType, Principal, any) {
	p := pick(c, "principal", genPrincipals...)
	tenant := pick(c, "tenant", genTenants...)
	at := baseTime.Add(time.Duration(i) * time.Second)
	switch c.intn("type", 13) {
	case 0, 1:
		return CmdCreateTenant, p, &CreateTenantCmd{ID: tenant, Name: pick(c, "name", "", "Name", "bad\nname"),
			Tier: pick(c, "tier", genTiers...), Quotas: Quotas{MaxUsers: pick(c, "quota", 0, 10, -1)}}
	case 2:
		u := &UpdateTenantCmd{ID: tenant}
		if c.intn("rename", 2) == 0 {
			n := pick(c, "name", "Renamed", "", "x\x01")
			u.Name = &n
		}
		if c.intn("retier", 3) == 0 {
			tier := pick(c, "tier", genTiers...)
			u.Tier = &tier
		}
		if c.intn("quotas", 4) == 0 {
			u.Quotas = &Quotas{MaxAPIKeys: pick(c, "quota", 0, 5, -2)}
		}
		return CmdUpdateTenant, p, u
	case 3:
		return CmdSetTenantStatus, p, &SetTenantStatusCmd{ID: tenant,
			Status: pick(c, "status", TenantSuspended, TenantActive, TenantActive, "gone")}
	case 4:
		return CmdDeleteTenant, p, &DeleteTenantCmd{ID: tenant}
	case 5:
		r := &SetRateLimitCmd{Tenant: tenant}
		if c.intn("by tier", 2) == 0 {
			r.Tier = pick(c, "tier", genTiers...)
		} else {
			r.RequestsPerMinute = pick(c, "rpm", 0, 1, 120, 5000, maxRPM+1)
			r.Burst = pick(c, "burst", 0, 10, 1000)
			if c.intn("costs", 3) == 0 {
				r.RouteCosts = map[string]int{"login": pick(c, "cost", 1, 5, 100000), "read": 1}
			}
		}
		return CmdSetRateLimit, p, r
	case 6:
		n := pick(c, "entries", 0, 1, 2, 5)
		es := make([]AuditInput, n)
		for j := range es {
			es[j] = AuditInput{Tenant: pick(c, "audit tenant", genTenants...), Action: pick(c, "action", genActions...),
				Time:  at.Add(time.Duration(c.intn("age", 7200)-3600) * time.Second),
				Actor: Actor{Kind: PrincipalUser, ID: fmt.Sprintf("u%d", c.intn("actor", 4)), Name: "ann"},
				IP:    "203.0.113.9", Metadata: map[string]string{"route": "/login", "n": fmt.Sprint(j)}}
		}
		return CmdAppendAudit, p, &AppendAuditCmd{Entries: es}
	case 7:
		var before time.Time
		if c.intn("zero cut-off", 5) != 0 {
			before = at.Add(-time.Duration(c.intn("keep", 3600)) * time.Second)
		}
		return CmdAuditRetention, p, &AuditRetentionCmd{Before: before}
	case 8:
		return CmdSetSecret, p, &SetSecretCmd{Secret: Secret{Name: pick(c, "secret", "pepper", "other", ""),
			Wrapped: []byte(fmt.Sprintf("wrapped-%d", i)), KeyRef: "k"}, Replace: c.intn("replace", 2) == 0}
	case 9:
		return CmdBootstrapOperator, pick(c, "bootstrapper", sysP, opP), &BootstrapOperatorCmd{
			Token: OperatorToken{ID: "root", Hash: strings.Repeat("0", pick(c, "hash len", 64, 10))}}
	case 10:
		name := pick(c, "kms key", "pii", "tokens", "a.b")
		rev := uint64(pick(c, "revision", 1, 1, 2, 3, 5))
		versions := int(rev)
		if c.intn("shape", 4) == 0 {
			versions = pick(c, "versions", 1, 3)
		}
		return CmdPutKMSKey, p, &PutKMSKeyCmd{Name: name, Tenant: pick(c, "kms owner", "", "", "acme", "globex"), Revision: rev,
			Record: kmsRecord(name, rev, versions, pick(c, "min dec", 1, 1, 2), pick(c, "backend", "local", "local", "aws"))}
	case 11:
		return CmdGrantKMSKey, p, &GrantKMSKeyCmd{Name: pick(c, "kms key", "pii", "tokens", "none"), Tenant: tenant,
			Revoke: c.intn("revoke", 3) == 0}
	default:
		return CmdNoop, p, nil
	}
}

// genLogs draws n raft log entries (indexes 1..n): mostly commands, some raft
// no-ops and unknown ignorable commands.
func genLogs(t fataler, c chooser, n int) []*raft.Log {
	t.Helper()
	logs := make([]*raft.Log, 0, n)
	for i := uint64(1); i <= uint64(n); i++ {
		h := Header{Time: baseTime.Add(time.Duration(i) * time.Second).UnixNano(), RequestID: fmt.Sprintf("r%d", i)}
		switch c.intn("log kind", 40) {
		case 0:
			logs = append(logs, &raft.Log{Index: i, Term: 1, Type: raft.LogNoop})
			continue
		case 1:
			h.Principal = opP
			b, err := Command{Type: lastCommandType() + 7, Flags: FlagIgnorable, Header: h, Payload: []byte(`{"x":1}`)}.Encode()
			if err != nil {
				t.Fatalf("encode: %v", err)
			}
			logs = append(logs, cmdLog(i, b))
			continue
		}
		typ, p, payload := genCommand(c, i)
		h.Principal = p
		logs = append(logs, cmdLog(i, mustEncode(t, typ, h, payload)))
	}
	return logs
}
