package fsm

import (
	"github.com/allsource/guard/auth"
	bolt "go.etcd.io/bbolt"
)

// livePrincipal re-checks, at apply time, that the credential a command was
// proposed with is still good: the user still exists, is enabled and holds the
// role the API saw; the API key still exists, is not revoked or expired and
// belongs to the tenant it claims. Between the API's check and Apply an admin
// may have disabled the user or revoked the key; every replica then refuses
// the command the same way.
func livePrincipal(w *wtx, p Principal) *Error {
	switch p.Kind {
	case PrincipalOperator, PrincipalSystem, PrincipalDev:
		return nil
	case PrincipalUser:
		u, ok := w.reader().User(p.Tenant, p.ID)
		if !ok || u.Disabled {
			return errf(CodeUnauthenticated, "the caller's account no longer exists or is disabled")
		}
		if u.Role != p.Role {
			return errf(CodeForbidden, "the caller's role has changed; sign in again")
		}
	case PrincipalAPIKey:
		k, ok := w.reader().APIKey(p.ID)
		if !ok || k.Tenant != p.Tenant || !k.RevokedAt.IsZero() || k.expired(w.now()) {
			return errf(CodeUnauthenticated, "the caller's API key no longer exists, is revoked or expired")
		}
		if k.Role != p.Role {
			return errf(CodeForbidden, "the caller's API key role does not match")
		}
	default:
		return errf(CodeForbidden, "unknown principal kind %q", p.Kind)
	}
	return nil
}

// authorize is the full apply-time check for a tenant-scoped command: the
// principal may act in tenant with perm, its credential is still live, and the
// tenant exists and (for tenant principals) is active.
func authorize(w *wtx, p Principal, tenant string, perm auth.Permission) (*Tenant, *Error) {
	if e := requireTenant(p, tenant, perm); e != nil {
		return nil, e
	}
	if e := livePrincipal(w, p); e != nil {
		return nil, e
	}
	return activeTenant(w, p, tenant)
}

// mayGrant reports whether p may create or manage a credential of role r:
// nobody grants above their own role. The operator and dev principal (an admin)
// may grant any tenant role.
func mayGrant(p Principal, r auth.Role) *Error {
	if !r.Valid() {
		return errf(CodeInvalidArgument, "unknown role %q (want admin, developer, readonly or serviceaccount)", r)
	}
	if p.IsOperator() || p.Kind == PrincipalDev {
		return nil
	}
	if !p.Role.Covers(r) {
		return errf(CodeForbidden, "role %s may not grant role %s", p.Role, r)
	}
	return nil
}

// bucket returns a domain bucket that may not exist yet in a store written by an
// older version (snapshots carry whatever buckets existed); nil when absent.
func bucket(tx *bolt.Tx, name []byte) *bolt.Bucket { return tx.Bucket(name) }

// wbucket returns a bucket for writing, creating it when a store written by an
// older version lacks it.
func (w *wtx) wbucket(name []byte) *bolt.Bucket {
	b, err := w.tx.CreateBucketIfNotExists(name)
	if err != nil {
		panic("fsm: create bucket " + string(name) + ": " + err.Error())
	}
	return b
}

// saveTenantCounters stores t's quota counters (no change event: counters are
// not enforcement state).
func (w *wtx) saveTenantCounters(t *Tenant) {
	putJSON(w.tx.Bucket(bTenants), []byte(t.ID), t)
}
