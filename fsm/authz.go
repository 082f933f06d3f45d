package fsm

import "github.com/allsource/guard/auth"

// The authorization checks Apply re-runs for every command, from the principal in
// the command header. They mirror the API's checks; when the two disagree (a
// role was lowered between check and apply), Apply wins.

func requireOperator(p Principal) *Error {
	if p.IsOperator() {
		return nil
	}
	return errf(CodeForbidden, "only the cluster operator may do this")
}

// requireTenant checks that p may act in tenant with permission perm. A tenant
// principal naming another tenant gets not_found, not forbidden, so the answer
// does not tell it whether that tenant exists.
func requireTenant(p Principal, tenant string, perm auth.Permission) *Error {
	if p.IsOperator() {
		return nil
	}
	if p.Tenant != tenant {
		return errf(CodeNotFound, "tenant %q not found", tenant)
	}
	if p.Kind == PrincipalDev {
		return nil
	}
	if !p.Role.Has(perm) {
		return errf(CodeForbidden, "role %s lacks the %s permission", p.Role, perm)
	}
	return nil
}

// activeTenant loads tenant t and refuses a missing one, or a suspended one for a
// non-operator principal (a suspended tenant's credentials stop working at once).
func activeTenant(w *wtx, p Principal, t string) (*Tenant, *Error) {
	ten, ok := w.reader().Tenant(t)
	if !ok {
		return nil, errf(CodeNotFound, "tenant %q not found", t)
	}
	if ten.Status != TenantActive && !p.IsOperator() {
		return nil, errf(CodeForbidden, "tenant %q is suspended", t)
	}
	return ten, nil
}
