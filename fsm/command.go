package fsm

import (
	"encoding/json"
	"fmt"

	"github.com/allsource/guard/auth"
)

// CommandType names a state-machine command. The enum is append-only: a value,
// once released, is never renumbered or reused, because old raft logs and
// snapshots hold it. Add new types at the end of the list.
type CommandType uint16

const (
	CmdInvalid CommandType = iota // never proposed
	CmdNoop                       // barrier / leadership confirmation
	CmdBootstrapOperator
	CmdCreateTenant
	CmdUpdateTenant
	CmdSetTenantStatus
	CmdDeleteTenant
	CmdSetRateLimit
	CmdAppendAudit
	CmdAuditRetention
	CmdSetSecret
	CmdCreateUser
	CmdUpdateUser
	CmdDeleteUser
	CmdSetPassword
	CmdLogin
	CmdLoginFailures
	CmdRefresh
	CmdLogout
	CmdCreateAPIKey
	CmdRevokeAPIKey
	CmdTouchAPIKeys
	CmdAddIPRule
	CmdRemoveIPRule
	CmdAddSigningKey
	CmdSetSigningKeyState
	CmdPruneExpired
	CmdRecordAnomalies
	CmdUndoAnomaly
	CmdSetThreatPolicy
	CmdMFAEnroll
	CmdMFAActivate
	CmdMFADisable
	CmdMFAUseRecovery
	CmdPutKMSKey
	CmdGrantKMSKey
	// Append new command types here, never above.
)

var cmdNames = [...]string{
	CmdInvalid: "invalid", CmdNoop: "noop", CmdBootstrapOperator: "bootstrap_operator",
	CmdCreateTenant: "create_tenant", CmdUpdateTenant: "update_tenant",
	CmdSetTenantStatus: "set_tenant_status", CmdDeleteTenant: "delete_tenant",
	CmdSetRateLimit: "set_rate_limit", CmdAppendAudit: "append_audit",
	CmdAuditRetention: "audit_retention", CmdSetSecret: "set_secret",
	CmdCreateUser: "create_user", CmdUpdateUser: "update_user", CmdDeleteUser: "delete_user",
	CmdSetPassword: "set_password", CmdLogin: "login", CmdLoginFailures: "login_failures",
	CmdRefresh: "refresh", CmdLogout: "logout", CmdCreateAPIKey: "create_api_key",
	CmdRevokeAPIKey: "revoke_api_key", CmdTouchAPIKeys: "touch_api_keys", CmdAddIPRule: "add_ip_rule",
	CmdRemoveIPRule: "remove_ip_rule", CmdAddSigningKey: "add_signing_key",
	CmdSetSigningKeyState: "set_signing_key_state", CmdPruneExpired: "prune_expired",
	CmdRecordAnomalies: "record_anomalies", CmdUndoAnomaly: "undo_anomaly", CmdSetThreatPolicy: "set_threat_policy",
	CmdMFAEnroll: "mfa_enroll", CmdMFAActivate: "mfa_activate", CmdMFADisable: "mfa_disable",
	CmdMFAUseRecovery: "mfa_use_recovery", CmdPutKMSKey: "put_kms_key", CmdGrantKMSKey: "grant_kms_key",
}

func (t CommandType) String() string {
	if int(t) < len(cmdNames) && cmdNames[t] != "" {
		return cmdNames[t]
	}
	return fmt.Sprintf("command(%d)", uint16(t))
}

// FlagIgnorable marks a command that replicas which do not know its type may skip.
// Without it an unknown type stops the replica (it must never silently diverge).
const FlagIgnorable uint8 = 1

// PrincipalKind says what kind of identity proposed a command.
type PrincipalKind string

const (
	PrincipalOperator PrincipalKind = "operator"
	PrincipalUser     PrincipalKind = "user"
	PrincipalAPIKey   PrincipalKind = "api_key"
	PrincipalSystem   PrincipalKind = "system" // the cluster itself (joins, anomaly responses)
	PrincipalDev      PrincipalKind = "dev"    // dev mode's synthetic admin
)

// Principal is the authenticated caller a command is proposed for. Apply re-checks
// every authorization decision against it, so a stale or forged API-side decision
// cannot change state.
type Principal struct {
	Kind   PrincipalKind `json:"kind"`
	ID     string        `json:"id,omitempty"`
	Tenant string        `json:"tenant,omitempty"` // empty for the operator and system
	Role   auth.Role     `json:"role,omitempty"`
	Name   string        `json:"name,omitempty"` // username or key name, for audit
}

// IsOperator reports whether p acts with cluster-wide authority.
func (p Principal) IsOperator() bool {
	return p.Kind == PrincipalOperator || p.Kind == PrincipalSystem
}

// Header carries what Apply needs beyond the payload. Everything that would make
// Apply non-deterministic (time, request identity) is resolved by the proposer.
type Header struct {
	Principal Principal `json:"pr"`
	Time      int64     `json:"ts"` // unix nanoseconds, read by the proposer
	RequestID string    `json:"rid,omitempty"`
	IP        string    `json:"ip,omitempty"`
	UserAgent string    `json:"ua,omitempty"`
}

// Command is the envelope of every raft log entry the FSM applies.
type Command struct {
	Type    CommandType     `json:"t"`
	Flags   uint8           `json:"f,omitempty"`
	Header  Header          `json:"h"`
	Payload json.RawMessage `json:"p,omitempty"`
}

// encodingV1 is the first byte of every encoded command.
const encodingV1 byte = 1

// NewCommand builds a command with a JSON payload.
func NewCommand(t CommandType, h Header, payload any) (Command, error) {
	c := Command{Type: t, Header: h}
	if payload != nil {
		b, err := json.Marshal(payload)
		if err != nil {
			return Command{}, fmt.Errorf("encode %s payload: %w", t, err)
		}
		c.Payload = b
	}
	return c, nil
}

// Encode serialises a command for the raft log.
func (c Command) Encode() ([]byte, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(b)+1)
	out = append(out, encodingV1)
	return append(out, b...), nil
}

// DecodeCommand parses an encoded command. It returns an error rather than
// panicking so that callers outside Apply (tools, fuzzers) can use it; Apply
// itself panics on the error.
func DecodeCommand(b []byte) (Command, error) {
	var c Command
	if len(b) == 0 {
		return c, fmt.Errorf("empty command")
	}
	if b[0] != encodingV1 {
		return c, fmt.Errorf("unknown command encoding %d", b[0])
	}
	if err := json.Unmarshal(b[1:], &c); err != nil {
		return c, fmt.Errorf("decode command: %w", err)
	}
	if c.Type == CmdInvalid {
		return c, fmt.Errorf("command type 0 is invalid")
	}
	return c, nil
}

// mustDecodePayload unmarshals a command payload into v. Only this program's own
// proposers write payloads, so a payload that does not decode means a corrupt log
// or a bug; every replica would fail the same way, and going on would let them
// diverge from what the proposer meant. It panics, as a decode failure of the
// envelope does.
func mustDecodePayload(c *Command, v any) {
	if err := json.Unmarshal(c.Payload, v); err != nil {
		panic(fmt.Sprintf("fsm: %s: corrupt payload: %v", c.Type, err))
	}
}
