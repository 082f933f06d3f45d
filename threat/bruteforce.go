package threat

import (
	"sort"
	"strings"

	"github.com/allsource/guard/fsm"
)

// userWin is the recent failed logins against one account, tagged with the
// source IP.
type userWin struct {
	fails window
}

// sourceWin is the recent failed logins from one source (an IP, or an API key
// driving logins), tagged with the username tried, and the distinct usernames
// of the stuffing window.
type sourceWin struct {
	fails window
	names map[string]int64 // username → last failure (unix ns)
}

// loginTarget returns the tenant the login was for, the account key and the
// username of a failed or successful login entry.
func loginTarget(ent *fsm.AuditEntry) (tenant, userKey, username string) {
	tenant = ent.Tenant
	if tenant == "" && ent.Metadata["tenant"] != "" {
		// Logins to an unknown tenant are audited on the cluster chain.
		userKey = ent.Metadata["tenant"] + "/"
	}
	username = strings.ToLower(ent.Actor.Name)
	if ent.Action == fsm.ActionAuthFailed {
		username = strings.ToLower(ent.Metadata["username"])
	}
	if ent.Actor.ID != "" && ent.Action != fsm.ActionAuthFailed {
		return tenant, userKey + ent.Actor.ID, username
	}
	return tenant, userKey + "name:" + username, username
}

func (e *Engine) loginFailed(ent *fsm.AuditEntry) {
	tenant, userKey, username := loginTarget(ent)
	t := ent.Time.UnixNano()
	T := e.cfg.BruteForceFailures
	since := t - int64(e.cfg.BruteForceWindow)

	uk := tenant + "\x00" + userKey
	u, ok := e.users.get(uk)
	if !ok {
		u = &userWin{fails: newWindow(max(4*T, 16))}
		e.users.put(uk, u)
	}
	u.fails.add(t, strings.Clone(ent.IP))
	if n := u.fails.count(since); n >= T {
		ipCount := map[string]int{}
		u.fails.each(since, func(h hit) { ipCount[h.tag]++ })
		dominant := dominantIP(ipCount, n)
		d := Detection{Tenant: tenant, Kind: fsm.AnomalyBruteForce, Actor: ent.Actor, Seq: ent.Seq, Time: ent.Time,
			Key: "bf:u:" + userKey, Subject: fsm.Subject{Username: username, IP: dominant},
			Score: 0.7 + 0.19*min(1, float64(n-T)/float64(T)),
			Factors: []fsm.Factor{
				f("failed_logins", float64(n), float64(T), "within "+e.cfg.BruteForceWindow.String()),
				f("distinct_ips", float64(len(ipCount)), 0, ""),
			},
			Summary: itoa(n) + " failed logins for " + username + " within " + e.cfg.BruteForceWindow.String()}
		if ent.Action != fsm.ActionAuthFailed {
			d.Subject.UserID = ent.Actor.ID
		}
		if dominant != "" {
			d.Factors = append(d.Factors, f("dominant_ip_share", float64(ipCount[dominant])/float64(n), 0.5, dominant))
			d.Summary += " from " + dominant
			e.raise(d, "src:ip:"+dominant)
		} else {
			e.raise(d)
		}
	}

	for _, src := range loginSources(ent) {
		e.sourceFailed(ent, tenant, src, username, t)
	}
}

// loginSources are the sources a failed login counts against: its IP, and
// the API key that drove it when one did.
func loginSources(ent *fsm.AuditEntry) []string {
	var out []string
	if ent.IP != "" {
		out = append(out, "ip:"+ent.IP)
	}
	if k := ent.Metadata["api_key_id"]; k != "" {
		out = append(out, "key:"+k)
	}
	return out
}

func (e *Engine) sourceFailed(ent *fsm.AuditEntry, tenant, src, username string, t int64) {
	T, S := e.cfg.BruteForceFailures, e.cfg.StuffingUsernames
	sk := tenant + "\x00" + src
	s, ok := e.sources.get(sk)
	if !ok {
		s = &sourceWin{fails: newWindow(max(4*T, 16)), names: map[string]int64{}}
		e.sources.put(sk, s)
	}
	// Kept in the window and as a map key (an assignment stores its key
	// anew): the engine's own copy.
	username = strings.Clone(username)
	s.fails.add(t, username)
	stuffSince := t - int64(e.cfg.StuffingWindow)
	if _, seen := s.names[username]; !seen && len(s.names) >= 4*S {
		pruneNames(s.names, stuffSince)
	}
	s.names[username] = t

	subject := fsm.Subject{}
	label := src[strings.IndexByte(src, ':')+1:]
	if strings.HasPrefix(src, "ip:") {
		subject.IP = label
	} else {
		subject.KeyID = label
	}
	distinct := 0
	for _, at := range s.names {
		if at >= stuffSince {
			distinct++
		}
	}
	if distinct >= S {
		e.raise(Detection{Tenant: tenant, Kind: fsm.AnomalyCredentialStuffing, Actor: ent.Actor, Seq: ent.Seq, Time: ent.Time,
			Key: "src:" + src, Subject: subject, Score: 0.7 + 0.19*min(1, float64(distinct-S)/float64(S)),
			Factors: []fsm.Factor{
				f("distinct_usernames", float64(distinct), float64(S), "within "+e.cfg.StuffingWindow.String()),
				f("failed_logins", float64(s.fails.count(t-int64(e.cfg.BruteForceWindow))), 0, "within "+e.cfg.BruteForceWindow.String()),
			},
			Summary: itoa(distinct) + " usernames failed from " + label + " within " + e.cfg.StuffingWindow.String()})
		return
	}
	since := t - int64(e.cfg.BruteForceWindow)
	users := map[string]bool{}
	n := 0
	s.fails.each(since, func(h hit) { n++; users[h.tag] = true })
	if n >= T && len(users) >= 2 {
		e.raise(Detection{Tenant: tenant, Kind: fsm.AnomalyBruteForce, Actor: ent.Actor, Seq: ent.Seq, Time: ent.Time,
			Key: "src:" + src, Subject: subject, Score: 0.7 + 0.19*min(1, float64(n-T)/float64(T)),
			Factors: []fsm.Factor{
				f("failed_logins", float64(n), float64(T), "within "+e.cfg.BruteForceWindow.String()),
				f("distinct_usernames", float64(len(users)), 2, ""),
			},
			Summary: itoa(n) + " failed logins across " + itoa(len(users)) + " users from " + label})
	}
}

// pruneNames drops usernames last seen before since, and, if that frees
// nothing, the oldest quarter.
func pruneNames(m map[string]int64, since int64) {
	for k, at := range m {
		if at < since {
			delete(m, k)
		}
	}
	if len(m) == 0 {
		return
	}
	type kv struct {
		k  string
		at int64
	}
	all := make([]kv, 0, len(m))
	for k, at := range m {
		all = append(all, kv{k, at})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].at < all[j].at || all[i].at == all[j].at && all[i].k < all[j].k })
	for _, x := range all[:max(1, len(all)/4)] {
		delete(m, x.k)
	}
}

// dominantIP is the IP behind at least half of n failures, or "".
func dominantIP(counts map[string]int, n int) string {
	best, bestN := "", 0
	for ip, c := range counts {
		if ip != "" && (c > bestN || c == bestN && ip < best) {
			best, bestN = ip, c
		}
	}
	if 2*bestN >= n {
		return best
	}
	return ""
}

func (e *Engine) loginSucceeded(ent *fsm.AuditEntry) {
	tenant, userKey, username := loginTarget(ent)
	t := ent.Time.UnixNano()
	T := e.cfg.BruteForceFailures
	since := t - int64(e.cfg.BruteForceWindow)
	if u, ok := e.users.peek(tenant + "\x00" + userKey); ok {
		if n := u.fails.count(since); n >= T {
			ipCount := map[string]int{}
			u.fails.each(since, func(h hit) { ipCount[h.tag]++ })
			d := Detection{Tenant: tenant, Kind: fsm.AnomalyBruteForce, Actor: ent.Actor, Seq: ent.Seq, Time: ent.Time,
				Key: "bf:u:" + userKey, Subject: fsm.Subject{UserID: ent.Actor.ID, Username: username}, Score: 0.95,
				Factors: []fsm.Factor{
					f("failed_logins", float64(n), float64(T), "within "+e.cfg.BruteForceWindow.String()),
					f("success_after_failures", 1, 0, ent.IP),
				},
				Summary: "login to " + username + " succeeded after " + itoa(n) + " failures: possible compromise"}
			if ipCount[ent.IP] > 0 {
				d.Subject.IP = ent.IP
			}
			e.raise(d)
		}
	}
	// Remember the account's login addresses (privilege escalation: a key
	// minted at the role ceiling right after a login from a new address).
	if ent.Actor.ID == "" || ent.IP == "" {
		return
	}
	a := e.actor(tenant, &ent.Actor)
	if !a.knowsIP(ent.IP) {
		ip := strings.Clone(ent.IP)
		if len(a.ips) > 0 {
			a.newIP, a.newIPAt = ip, t
		}
		a.addIP(ip)
	}
}
