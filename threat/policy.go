package threat

import (
	"crypto/sha256"
	"encoding/hex"
	"net/netip"
	"time"

	"github.com/allsource/guard/fsm"
)

// Plan turns a detection into the automatic actions of the tenant's policy
// at time now. The recommended level is capped at the policy's MaxLevel; the
// actions of a level depend on the subject:
//
//	monitor, alert  nothing (recorded and alerted only)
//	require_mfa     user: a second factor on the next login
//	block           user: locked for LockUserFor; key: revoked; IP: blocked for BlockIPFor
//	revoke_access   as block, and the user's sessions end
//
// exempt lists addresses never blocked (the servers' own, load balancers).
// Rule ids derive from the anomaly id, so a re-proposal names the same rule.
func Plan(d *Detection, pol fsm.ThreatPolicy, now time.Time, exempt []netip.Prefix) []fsm.ResponseAction {
	if !pol.AutoRespond {
		return nil
	}
	level := d.Level
	if level.Rank() > pol.MaxLevel.Rank() {
		level = pol.MaxLevel
	}
	var out []fsm.ResponseAction
	user := d.Subject.UserID != "" && d.Tenant != "" && fsm.ValidObjectID("user", d.Subject.UserID) == nil
	key := d.Subject.KeyID != "" && d.Tenant != "" && fsm.ValidObjectID("api key", d.Subject.KeyID) == nil
	switch level {
	case fsm.LevelRequireMFA:
		if user {
			out = append(out, fsm.ResponseAction{Kind: fsm.RespRequireMFA, Target: d.Subject.UserID})
		}
	case fsm.LevelBlock, fsm.LevelRevokeAccess:
		if user {
			out = append(out, fsm.ResponseAction{Kind: fsm.RespLockUser, Target: d.Subject.UserID, Until: now.Add(pol.LockUserFor).UTC()})
			if level == fsm.LevelRevokeAccess {
				out = append(out, fsm.ResponseAction{Kind: fsm.RespEndSessions, Target: d.Subject.UserID})
			}
		}
		if key {
			out = append(out, fsm.ResponseAction{Kind: fsm.RespRevokeKey, Target: d.Subject.KeyID})
		}
		if pfx, ok := blockable(d.Subject.IP, exempt); ok {
			scope := pol.BlockIPScope
			if d.Tenant == "" {
				scope = "global"
			}
			out = append(out, fsm.ResponseAction{Kind: fsm.RespBlockIP, Target: pfx, Scope: scope,
				RuleID: derivedID(d.ID(), "block_ip"), Until: now.Add(pol.BlockIPFor).UTC()})
		}
	}
	return out
}

// blockable returns the host prefix of ip unless ip is empty, malformed or
// exempt.
func blockable(ip string, exempt []netip.Prefix) (string, bool) {
	if ip == "" {
		return "", false
	}
	a, err := netip.ParseAddr(ip)
	if err != nil || a.Zone() != "" {
		return "", false
	}
	a = a.Unmap()
	for _, p := range exempt {
		if p.Contains(a) {
			return "", false
		}
	}
	return netip.PrefixFrom(a, a.BitLen()).String(), true
}

// derivedID is a 32-hex id derived from another id and a purpose.
func derivedID(id, purpose string) string {
	s := sha256.Sum256([]byte(id + "\x00" + purpose))
	return hex.EncodeToString(s[:16])
}

// ToAnomaly converts a detection and its planned actions into the record
// proposed to the state machine.
func ToAnomaly(d *Detection, actions []fsm.ResponseAction) fsm.Anomaly {
	return fsm.Anomaly{ID: d.ID(), Tenant: d.Tenant, Kind: d.Kind, Score: d.Score, Level: d.Level,
		Factors: d.Factors, Subject: d.Subject, Actor: d.Actor, Summary: truncate(d.Summary, 512),
		Key: truncate(d.Key, 512), TriggerSeq: d.Seq, TriggerTime: d.Time.UTC(), Actions: actions}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
