package fsm

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"

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

// Command is the envelope of every raft log entry the FSM applies. Its
// payload is either JSON (Payload) or, for the hot commands that have a
// binary form (audit batches, login failures, API-key use), binary
// (BinPayload); at most one of the two is set.
type Command struct {
	Type       CommandType     `json:"t"`
	Flags      uint8           `json:"f,omitempty"`
	Header     Header          `json:"h"`
	Payload    json.RawMessage `json:"p,omitempty"`
	BinPayload []byte          `json:"-"`
	// binText is BinPayload as a string when the decoder made one: the
	// payload's strings are then its substrings.
	binText string
	// dec is the payload's decoder (here, it costs no allocation).
	dec bdec
}

// The first byte of every encoded command says how the rest is encoded.
// Version 1 is the envelope as JSON; version 2 is binary (codec.go):
//
//	2  uvarint(type)  flags
//	header: principal kind, id, tenant, role, name (strings), varint(time),
//	        request id, ip, user agent (strings)
//	payload kind: 0 none, 1 JSON, 2 binary; the payload is the rest of the entry
//
// Encode writes version 2; DecodeCommand reads both, so logs and snapshots
// written before version 2 still apply.
const (
	encodingV1 byte = 1
	encodingV2 byte = 2

	payloadNone   byte = 0
	payloadJSON   byte = 1
	payloadBinary byte = 2
)

// NewCommand builds a command. A payload with a binary form is encoded
// binary, any other as JSON.
func NewCommand(t CommandType, h Header, payload any) (Command, error) {
	c := Command{Type: t, Header: h}
	if payload == nil {
		return c, nil
	}
	if bp, ok := payload.(binaryPayload); ok {
		c.BinPayload = bp.appendBinary(make([]byte, 0, 256))
		return c, nil
	}
	b, err := json.Marshal(payload)
	if err != nil {
		return Command{}, fmt.Errorf("encode %s payload: %w", t, err)
	}
	c.Payload = b
	return c, nil
}

// Encode serialises a command for the raft log (envelope version 2).
func (c Command) Encode() ([]byte, error) {
	if len(c.Payload) > 0 && len(c.BinPayload) > 0 {
		return nil, fmt.Errorf("command %s has both a JSON and a binary payload", c.Type)
	}
	h := &c.Header
	b := make([]byte, 0, 64+len(h.Principal.ID)+len(h.Principal.Name)+len(h.RequestID)+len(h.UserAgent)+
		len(c.Payload)+len(c.BinPayload))
	b = append(b, encodingV2)
	b = binary.AppendUvarint(b, uint64(c.Type))
	b = append(b, c.Flags)
	b = appendText(b, string(h.Principal.Kind))
	b = appendText(b, h.Principal.ID)
	b = appendText(b, h.Principal.Tenant)
	b = appendText(b, string(h.Principal.Role))
	b = appendText(b, h.Principal.Name)
	b = binary.AppendVarint(b, h.Time)
	b = appendText(b, h.RequestID)
	b = appendText(b, h.IP)
	b = appendText(b, h.UserAgent)
	switch {
	case len(c.BinPayload) > 0:
		b = append(b, payloadBinary)
		b = append(b, c.BinPayload...)
	case len(c.Payload) > 0:
		if !json.Valid(c.Payload) {
			return nil, fmt.Errorf("command %s: payload is not valid JSON", c.Type)
		}
		b = append(b, payloadJSON)
		b = append(b, c.Payload...)
	default:
		b = append(b, payloadNone)
	}
	return b, nil
}

// DecodeCommand parses an encoded command. It returns an error rather than
// panicking so that callers outside Apply (tools, fuzzers) can use it; Apply
// itself panics on the error. The payloads of a decoded command alias b.
func DecodeCommand(b []byte) (Command, error) {
	var c Command
	err := decodeCommand(b, &c, nil)
	return c, err
}

// decodeCommand is DecodeCommand into c, which it resets first (Apply reuses
// one Command for the entries of a batch). The strings of an audit append
// are copied into text when it is set (see textArena).
func decodeCommand(b []byte, c *Command, text *textArena) error {
	*c = Command{}
	if len(b) == 0 {
		return fmt.Errorf("empty command")
	}
	switch b[0] {
	case encodingV1:
		if err := json.Unmarshal(b[1:], c); err != nil {
			*c = Command{}
			return fmt.Errorf("decode command: %w", err)
		}
	case encodingV2:
		if err := c.decodeV2(b[1:], text); err != nil {
			*c = Command{}
			return fmt.Errorf("decode command: %w", err)
		}
	default:
		return fmt.Errorf("unknown command encoding %d", b[0])
	}
	if c.Type == CmdInvalid {
		return fmt.Errorf("command type 0 is invalid")
	}
	return nil
}

func (c *Command) decodeV2(b []byte, text *textArena) error {
	// One string copy of the entry holds every string of the header and of a
	// binary payload (one allocation instead of one per field, or none when
	// text has room).
	t, _ := binary.Uvarint(b)
	var d *bdec
	if text != nil && t == uint64(CmdAppendAudit) {
		d = &c.dec
		*d = bdec{b: b, n0: len(b), s: text.copy(b)}
	} else {
		d = newSharedBdec(b)
	}
	t = d.uvarint()
	if t > math.MaxUint16 {
		d.fail("command type out of range")
	}
	c.Type = CommandType(t)
	c.Flags = d.byte1()
	h := &c.Header
	h.Principal.Kind = PrincipalKind(d.str())
	h.Principal.ID = d.str()
	h.Principal.Tenant = d.str()
	h.Principal.Role = auth.Role(d.str())
	h.Principal.Name = d.str()
	h.Time = d.varint()
	h.RequestID = d.str()
	h.IP = d.str()
	h.UserAgent = d.str()
	kind := d.byte1()
	if d.err != nil {
		return d.err
	}
	rest := d.b
	switch kind {
	case payloadNone:
		if len(rest) != 0 {
			return fmt.Errorf("%w: trailing bytes", errBinary)
		}
	case payloadJSON:
		if len(rest) == 0 || !json.Valid(rest) {
			return fmt.Errorf("%w: JSON payload is not valid JSON", errBinary)
		}
		c.Payload = rest[:len(rest):len(rest)]
	case payloadBinary:
		if len(rest) == 0 {
			return fmt.Errorf("%w: empty binary payload", errBinary)
		}
		c.BinPayload = rest[:len(rest):len(rest)]
		c.binText = d.s[len(b)-len(rest):]
	default:
		return fmt.Errorf("%w: unknown payload kind %d", errBinary, kind)
	}
	return nil
}

// mustDecodePayload unmarshals a command payload into v. Only this program's own
// proposers write payloads, so a payload that does not decode means a corrupt log
// or a bug; every replica would fail the same way, and going on would let them
// diverge from what the proposer meant. It panics, as a decode failure of the
// envelope does.
func mustDecodePayload(c *Command, v any) {
	if err := decodePayload(c, v); err != nil {
		panic(fmt.Sprintf("fsm: %s: corrupt payload: %v", c.Type, err))
	}
}

// decodePayload decodes c's payload, JSON or binary, into v.
func decodePayload(c *Command, v any) error {
	if c.BinPayload == nil {
		return json.Unmarshal(c.Payload, v)
	}
	bp, ok := v.(binaryPayload)
	if !ok {
		return fmt.Errorf("a binary payload for a command without a binary form")
	}
	// A decoded command already holds its payload as a string (binText);
	// only a command built in process needs the copy.
	text := c.binText
	if len(text) != len(c.BinPayload) {
		text = string(c.BinPayload)
	}
	d := &c.dec
	*d = bdec{b: c.BinPayload, n0: len(c.BinPayload), s: text}
	bp.decodeBinary(d)
	return d.done()
}
