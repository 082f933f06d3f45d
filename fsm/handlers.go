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
	case CmdCreateUser:
		return applyCreateUser, true
	case CmdUpdateUser:
		return applyUpdateUser, true
	case CmdDeleteUser:
		return applyDeleteUser, true
	case CmdSetPassword:
		return applySetPassword, true
	case CmdLogin:
		return applyLogin, true
	case CmdLoginFailures:
		return applyLoginFailures, true
	case CmdRefresh:
		return applyRefresh, true
	case CmdLogout:
		return applyLogout, true
	case CmdCreateAPIKey:
		return applyCreateAPIKey, true
	case CmdRevokeAPIKey:
		return applyRevokeAPIKey, true
	case CmdTouchAPIKeys:
		return applyTouchAPIKeys, true
	case CmdAddIPRule:
		return applyAddIPRule, true
	case CmdRemoveIPRule:
		return applyRemoveIPRule, true
	case CmdAddSigningKey:
		return applyAddSigningKey, true
	case CmdSetSigningKeyState:
		return applySetSigningKeyState, true
	case CmdPruneExpired:
		return applyPruneExpired, true
	case CmdRecordAnomalies:
		return applyRecordAnomalies, true
	case CmdUndoAnomaly:
		return applyUndoAnomaly, true
	case CmdSetThreatPolicy:
		return applySetThreatPolicy, true
	case CmdMFAEnroll:
		return applyMFAEnroll, true
	case CmdMFAActivate:
		return applyMFAActivate, true
	case CmdMFADisable:
		return applyMFADisable, true
	case CmdMFAUseRecovery:
		return applyMFAUseRecovery, true
	case CmdPutKMSKey:
		return applyPutKMSKey, true
	case CmdGrantKMSKey:
		return applyGrantKMSKey, true
	}
	return nil, false
}
