package fsm

type handler func(w *wtx, c *Command) (any, *Error)

// handlers maps a command type to its apply function. A switch, not a registry:
// the set of commands is fixed at compile time and visible in one place.
func handlers(t CommandType) (handler, bool) {
	switch t {
	case CmdNoop:
		return func(*wtx, *Command) (any, *Error) { return nil, nil }, true
	case CmdBootstrapOperator:
		return applyBootstrapOperator, true
	case CmdCreateTenant:
		return applyCreateTenant, true
	case CmdUpdateTenant:
		return applyUpdateTenant, true
	case CmdSetTenantStatus:
		return applySetTenantStatus, true
	case CmdDeleteTenant:
		return applyDeleteTenant, true
	case CmdSetRateLimit:
		return applySetRateLimit, true
	case CmdAppendAudit:
		return applyAppendAudit, true
	case CmdAuditRetention:
		return applyAuditRetention, true
	case CmdSetSecret:
		return applySetSecret, true
	}
	return nil, false
}
