package enforcement

import (
	"errors"
	"fmt"
	"hash/maphash"
	"maps"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/allsource/guard/auth"
	"github.com/allsource/guard/fsm"
)

// View is an immutable replica of the enforcement view at one raft index:
// tenants with their status and rate-limit policy, users' role and status,
// API-key hashes, IP rules, verification keys, revocations and the API-key
// pepper. The decision pipeline reads it with no locking; the replica builds
// a new View for every applied change batch (copying only the shards a batch
// touches) and swaps it in atomically.
type View struct {
	// Index is the raft index the view reflects; Cluster the cluster's id.
	Index   uint64
	Cluster string

	seed     maphash.Seed
	tenants  smap[*tenantState]             // tenant id
	users    smap[*fsm.ViewUser]            // tenant \x00 user id
	keys     smap[*fsm.ViewAPIKey]          // key id
	ipRecs   smap[*fsm.ViewIPRule]          // tenant \x00 rule id
	revoked  smap[*fsm.ViewRevocation]      // jti
	families smap[*fsm.ViewRevocation]      // refresh family id
	signing  map[string]*fsm.ViewSigningKey // kid (a handful)
	secrets  map[string]*fsm.ViewSecret     // name → sealed secret

	ip     *IPFilter
	keySet *auth.KeySet
	keyGen uint64 // changes whenever keySet does (verified-token cache)
	pepper *auth.Pepper

	// nextExpiry is the earliest expiry of an IP rule still in the filter
	// (zero: none); Expire removes rules whose time has come.
	nextExpiry time.Time
	counts     ViewCounts
}

// ViewCounts sizes a view (for /health and metrics).
type ViewCounts struct {
	Tenants     int  `json:"tenants"`
	Users       int  `json:"users"`
	APIKeys     int  `json:"api_keys"`
	IPRules     int  `json:"ip_rules"`
	SigningKeys int  `json:"signing_keys"`
	Revocations int  `json:"revocations"`
	Pepper      bool `json:"pepper"`
}

type tenantState struct {
	tenant *fsm.ViewTenant // nil: only the limit is known so far
	limit  *fsm.ViewLimit
}

// NewView returns an empty view (index 0) for a replica to build on.
func NewView() *View {
	seed := maphash.MakeSeed()
	return &View{seed: seed, tenants: newSmap[*tenantState](seed), users: newSmap[*fsm.ViewUser](seed),
		keys: newSmap[*fsm.ViewAPIKey](seed), ipRecs: newSmap[*fsm.ViewIPRule](seed),
		revoked: newSmap[*fsm.ViewRevocation](seed), families: newSmap[*fsm.ViewRevocation](seed),
		signing: map[string]*fsm.ViewSigningKey{}, secrets: map[string]*fsm.ViewSecret{},
		ip: NewIPFilter(IPAllow)}
}

// Counts returns the view's sizes.
func (v *View) Counts() ViewCounts { return v.counts }

// HasPepper reports whether the view can verify API keys.
func (v *View) HasPepper() bool { return v.pepper != nil }

// Tenant returns a tenant's record.
func (v *View) Tenant(id string) (*fsm.ViewTenant, bool) {
	ts, ok := v.tenants.get(id)
	if !ok || ts.tenant == nil {
		return nil, false
	}
	return ts.tenant, true
}

// APIKey returns a key's record.
func (v *View) APIKey(id string) (*fsm.ViewAPIKey, bool) { return v.keys.get(id) }

// User returns a user's record.
func (v *View) User(tenant, id string) (*fsm.ViewUser, bool) {
	var buf [160]byte
	return v.users.getBytes(append(append(append(buf[:0], tenant...), 0), id...))
}

// Revoked reports whether a token id is revoked.
func (v *View) Revoked(jti string) bool { _, ok := v.revoked.get(jti); return ok }

// FamilyRevoked reports whether a refresh family is revoked.
func (v *View) FamilyRevoked(fam string) bool { _, ok := v.families.get(fam); return ok }

// IPFilter returns the view's IP filter.
func (v *View) IPFilter() *IPFilter { return v.ip }

// KeySet returns the token verification keys (nil when there are none).
func (v *View) KeySet() *auth.KeySet { return v.keySet }

// Each calls fn for every record of the view in a stable kind order (what
// the replica persists). It stops at fn's first error.
func (v *View) Each(fn func(fsm.ViewRecord) error) error {
	var err error
	stop := func(rec fsm.ViewRecord) bool {
		err = fn(rec)
		return err != nil
	}
	v.tenants.each(func(_ string, ts *tenantState) bool {
		if ts.tenant != nil && stop(fsm.ViewRecord{Kind: fsm.ChangeTenant, Tenant: ts.tenant.ID, Key: ts.tenant.ID, TenantRec: ts.tenant}) {
			return false
		}
		return ts.limit == nil || !stop(fsm.ViewRecord{Kind: fsm.ChangeLimit, Tenant: ts.limit.Tenant, Key: ts.limit.Tenant, Limit: ts.limit})
	})
	if err != nil {
		return err
	}
	v.users.each(func(_ string, u *fsm.ViewUser) bool {
		return !stop(fsm.ViewRecord{Kind: fsm.ChangeUser, Tenant: u.Tenant, Key: u.ID, User: u})
	})
	if err != nil {
		return err
	}
	v.keys.each(func(_ string, k *fsm.ViewAPIKey) bool {
		return !stop(fsm.ViewRecord{Kind: fsm.ChangeAPIKey, Tenant: k.Tenant, Key: k.ID, APIKey: k})
	})
	if err != nil {
		return err
	}
	v.ipRecs.each(func(_ string, r *fsm.ViewIPRule) bool {
		return !stop(fsm.ViewRecord{Kind: fsm.ChangeIPRule, Tenant: r.Tenant, Key: r.ID, IPRule: r})
	})
	if err != nil {
		return err
	}
	for _, k := range v.signing {
		if stop(fsm.ViewRecord{Kind: fsm.ChangeSigningKey, Key: k.KID, SigningKey: k}) {
			return err
		}
	}
	v.revoked.each(func(_ string, r *fsm.ViewRevocation) bool {
		return !stop(fsm.ViewRecord{Kind: fsm.ChangeRevocation, Tenant: r.Tenant, Key: r.JTI, Revocation: r})
	})
	if err != nil {
		return err
	}
	v.families.each(func(_ string, r *fsm.ViewRevocation) bool {
		return !stop(fsm.ViewRecord{Kind: fsm.ChangeRevocation, Tenant: r.Tenant, Key: "family/" + r.Family, Revocation: r})
	})
	if err != nil {
		return err
	}
	for _, s := range v.secrets {
		if stop(fsm.ViewRecord{Kind: fsm.ChangeSecret, Key: s.Name, Secret: s}) {
			return err
		}
	}
	return nil
}

// ---- building views ----

// viewBuilder applies records on top of a view, copying each shard (and the
// IP filter's touched paths) at most once per build.
type viewBuilder struct {
	v         View
	joinToken string
	owned     [7][viewShards]bool
	ownedArr  [7]bool
	ipb       *IPFilterBuilder
	signing   bool // signing keys changed: rebuild the key set
	secrets   bool
	expiryDue bool
	now       time.Time
}

const (
	ownTenants = iota
	ownUsers
	ownKeys
	ownIPRecs
	ownRevoked
	ownFamilies
)

// edit starts a change set; joinToken opens sealed secrets.
func (v *View) edit(joinToken string, now time.Time) *viewBuilder {
	return &viewBuilder{v: *v, joinToken: joinToken, now: now}
}

// ErrRecord is wrapped by errors about records that cannot be applied.
var ErrRecord = errors.New("bad view record")

// apply changes the view by one record. Errors leave the builder usable: a
// bad record is skipped, not fatal (the next full resync replaces it).
func (b *viewBuilder) apply(rec *fsm.ViewRecord) error {
	switch rec.Kind {
	case fsm.ChangeTenant:
		id := rec.Key
		if rec.Deleted || rec.TenantRec == nil {
			b.deleteTenant(id)
			return nil
		}
		ts, _ := b.v.tenants.get(id)
		n := &tenantState{tenant: rec.TenantRec}
		if ts != nil {
			n.limit = ts.limit
		}
		ownShard(b, ownTenants, &b.v.tenants, id)[id] = n
	case fsm.ChangeLimit:
		id := rec.Key
		ts, _ := b.v.tenants.get(id)
		n := &tenantState{}
		if ts != nil {
			*n = *ts
		}
		if rec.Deleted || rec.Limit == nil {
			n.limit = nil
		} else {
			n.limit = rec.Limit
		}
		m := ownShard(b, ownTenants, &b.v.tenants, id)
		if n.tenant == nil && n.limit == nil {
			delete(m, id)
		} else {
			m[id] = n
		}
	case fsm.ChangeUser:
		k := rec.Tenant + "\x00" + rec.Key
		if rec.Deleted || rec.User == nil {
			delete(ownShard(b, ownUsers, &b.v.users, k), k)
		} else {
			ownShard(b, ownUsers, &b.v.users, k)[k] = rec.User
		}
	case fsm.ChangeAPIKey:
		if rec.Deleted || rec.APIKey == nil {
			delete(ownShard(b, ownKeys, &b.v.keys, rec.Key), rec.Key)
		} else {
			ownShard(b, ownKeys, &b.v.keys, rec.Key)[rec.Key] = rec.APIKey
		}
	case fsm.ChangeIPRule:
		return b.applyIPRule(rec)
	case fsm.ChangeSigningKey:
		if rec.Deleted || rec.SigningKey == nil {
			if b.v.signing[rec.Key] != nil {
				b.ownSigning()
				delete(b.v.signing, rec.Key)
			}
		} else {
			b.ownSigning()
			b.v.signing[rec.Key] = rec.SigningKey
		}
	case fsm.ChangeRevocation:
		fam, isFam := strings.CutPrefix(rec.Key, "family/")
		if isFam {
			if rec.Deleted || rec.Revocation == nil {
				delete(ownShard(b, ownFamilies, &b.v.families, fam), fam)
			} else {
				ownShard(b, ownFamilies, &b.v.families, fam)[fam] = rec.Revocation
			}
		} else if rec.Deleted || rec.Revocation == nil {
			delete(ownShard(b, ownRevoked, &b.v.revoked, rec.Key), rec.Key)
		} else {
			ownShard(b, ownRevoked, &b.v.revoked, rec.Key)[rec.Key] = rec.Revocation
		}
	case fsm.ChangeSecret:
		if !b.secrets {
			b.v.secrets = maps.Clone(b.v.secrets)
			b.secrets = true
		}
		if rec.Deleted || rec.Secret == nil {
			delete(b.v.secrets, rec.Key)
			if rec.Key == fsm.SecretPepper {
				b.v.pepper = nil
			}
			return nil
		}
		if old := b.v.secrets[rec.Key]; old != nil && old.Version == rec.Secret.Version && (rec.Key != fsm.SecretPepper || b.v.pepper != nil) {
			return nil
		}
		b.v.secrets[rec.Key] = rec.Secret
		if rec.Key == fsm.SecretPepper {
			plain, err := fsm.OpenViewSecret(b.joinToken, fsm.SecretPepper, rec.Secret.Sealed)
			if err != nil {
				b.v.pepper = nil
				return fmt.Errorf("%w: API-key pepper: %v", ErrRecord, err)
			}
			p, err := auth.NewPepper(plain)
			clear(plain)
			if err != nil {
				return fmt.Errorf("%w: API-key pepper: %v", ErrRecord, err)
			}
			b.v.pepper = p
		}
	default:
		// A kind this edge does not know (a newer server): ignore it.
	}
	return nil
}

func (b *viewBuilder) ownSigning() {
	if !b.signing {
		b.v.signing = maps.Clone(b.v.signing)
		b.signing = true
	}
}

func (b *viewBuilder) ipBuilder() *IPFilterBuilder {
	if b.ipb == nil {
		b.ipb = b.v.ip.Builder()
	}
	return b.ipb
}

func ipRuleID(tenant, id string) string { return tenant + "/" + id }

func (b *viewBuilder) applyIPRule(rec *fsm.ViewRecord) error {
	k := rec.Tenant + "\x00" + rec.Key
	id := ipRuleID(rec.Tenant, rec.Key)
	if rec.Deleted || rec.IPRule == nil {
		delete(ownShard(b, ownIPRecs, &b.v.ipRecs, k), k)
		b.ipBuilder().Remove(id)
		return nil
	}
	r := rec.IPRule
	pfx, err := netip.ParsePrefix(r.CIDR)
	if err != nil {
		if pfx, err = ParseCIDR(r.CIDR); err != nil {
			return fmt.Errorf("%w: ip rule %s: %v", ErrRecord, rec.Key, err)
		}
	}
	act := IPAllow
	if r.Action == fsm.IPBlock {
		act = IPBlock
	}
	if !r.ExpiresAt.IsZero() && !b.now.Before(r.ExpiresAt) {
		// Already expired: the servers will prune it; it never applies here.
		delete(ownShard(b, ownIPRecs, &b.v.ipRecs, k), k)
		b.ipBuilder().Remove(id)
		return nil
	}
	if err := b.ipBuilder().Add(IPRule{ID: id, Tenant: r.Tenant, Prefix: pfx, Action: act}); err != nil {
		return fmt.Errorf("%w: %v", ErrRecord, err)
	}
	ownShard(b, ownIPRecs, &b.v.ipRecs, k)[k] = r
	if !r.ExpiresAt.IsZero() {
		b.expiryDue = true
	}
	return nil
}

// deleteTenant removes a tenant and everything scoped to it: the state
// machine deletes those records with the tenant and reports only the
// tenant's deletion.
func (b *viewBuilder) deleteTenant(id string) {
	delete(ownShard(b, ownTenants, &b.v.tenants, id), id)
	prefix := id + "\x00"
	for i := range viewShards {
		var users []string
		for k := range b.v.users.shards[i] {
			if strings.HasPrefix(k, prefix) {
				users = append(users, k)
			}
		}
		if len(users) > 0 {
			m := ownShardAt(b, ownUsers, &b.v.users, i)
			for _, k := range users {
				delete(m, k)
			}
		}
		var keys []string
		for k, rec := range b.v.keys.shards[i] {
			if rec.Tenant == id {
				keys = append(keys, k)
			}
		}
		if len(keys) > 0 {
			m := ownShardAt(b, ownKeys, &b.v.keys, i)
			for _, k := range keys {
				delete(m, k)
			}
		}
		var rules []string
		for k, r := range b.v.ipRecs.shards[i] {
			if r.Tenant == id {
				rules = append(rules, k)
			}
		}
		if len(rules) > 0 {
			m := ownShardAt(b, ownIPRecs, &b.v.ipRecs, i)
			for _, k := range rules {
				r := m[k]
				delete(m, k)
				b.ipBuilder().Remove(ipRuleID(r.Tenant, r.ID))
			}
		}
	}
}

// ownShard returns the writable shard of m holding key, copying it on the
// first write of this build.
func ownShard[V any](b *viewBuilder, kind int, m *smap[V], key string) map[string]V {
	return ownShardAt(b, kind, m, m.shardIndex(key))
}

func ownShardAt[V any](b *viewBuilder, kind int, m *smap[V], i int) map[string]V {
	if !b.owned[kind][i] {
		if !b.ownedArr[kind] {
			cp := *m.shards
			m.shards = &cp
			b.ownedArr[kind] = true
		}
		m.shards[i] = maps.Clone(m.shards[i])
		if m.shards[i] == nil {
			m.shards[i] = make(map[string]V)
		}
		b.owned[kind][i] = true
	}
	return m.shards[i]
}

// build freezes the change set into a new view at index.
func (b *viewBuilder) build(index uint64) *View {
	v := b.v
	v.Index = index
	if b.ipb != nil {
		v.ip = b.ipb.Build()
	}
	if b.signing {
		v.keySet, v.keyGen = buildKeySet(v.signing, b.joinToken), nextKeyGen()
	}
	if b.expiryDue || b.ipb != nil {
		v.nextExpiry = time.Time{}
		v.ipRecs.each(func(_ string, r *fsm.ViewIPRule) bool {
			if !r.ExpiresAt.IsZero() && (v.nextExpiry.IsZero() || r.ExpiresAt.Before(v.nextExpiry)) {
				v.nextExpiry = r.ExpiresAt
			}
			return true
		})
	}
	v.counts = ViewCounts{Tenants: v.tenants.len(), Users: v.users.len(), APIKeys: v.keys.len(),
		IPRules: v.ip.Len(), SigningKeys: len(v.signing), Revocations: v.revoked.len() + v.families.len(),
		Pepper: v.pepper != nil}
	return &v
}

// Expire returns a view without the IP rules whose expiry is at or before
// now (the servers prune them too, but an edge must not wait for that), or v
// itself when none is due.
func (v *View) Expire(now time.Time) *View {
	if v.nextExpiry.IsZero() || now.Before(v.nextExpiry) {
		return v
	}
	b := v.edit("", now)
	var due []*fsm.ViewIPRule
	v.ipRecs.each(func(_ string, r *fsm.ViewIPRule) bool {
		if !r.ExpiresAt.IsZero() && !now.Before(r.ExpiresAt) {
			due = append(due, r)
		}
		return true
	})
	for _, r := range due {
		_ = b.apply(&fsm.ViewRecord{Kind: fsm.ChangeIPRule, Tenant: r.Tenant, Key: r.ID, Deleted: true})
	}
	b.expiryDue = true
	nv := b.build(v.Index)
	nv.keySet, nv.keyGen, nv.pepper = v.keySet, v.keyGen, v.pepper
	return nv
}

var keyGenSeq atomic.Uint64

func nextKeyGen() uint64 { return keyGenSeq.Add(1) }

// buildKeySet makes the verification key set from the signing-key records.
// Keys that cannot be used (an HS256 key whose sealed secret is missing or
// does not open) are left out: tokens signed by them fail as unknown-key.
func buildKeySet(recs map[string]*fsm.ViewSigningKey, joinToken string) *auth.KeySet {
	keys := make([]*auth.VerificationKey, 0, len(recs))
	for _, r := range recs {
		state := r.State
		if !state.Valid() {
			state = auth.KeyVerifyOnly
		}
		var k *auth.VerificationKey
		var err error
		switch r.Alg {
		case auth.AlgEdDSA:
			k, err = auth.NewEd25519VerificationKey(r.KID, r.PublicKey, state)
		case auth.AlgHS256:
			if len(r.Sealed) == 0 {
				continue
			}
			sec, oerr := fsm.OpenViewSecret(joinToken, "signing/"+r.KID, r.Sealed)
			if oerr != nil {
				continue
			}
			k, err = auth.NewHS256VerificationKey(r.KID, sec, state)
			clear(sec)
		default:
			continue
		}
		if err == nil {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil
	}
	ks, err := auth.NewKeySet(keys...)
	if err != nil {
		return nil
	}
	return ks
}

// ---- sharded copy-on-write maps ----

const viewShards = 256

// smap is a map split into 256 shards behind a pointer to their array, so a
// new view shares every shard a change set did not touch.
type smap[V any] struct {
	seed   maphash.Seed
	shards *[viewShards]map[string]V
}

func newSmap[V any](seed maphash.Seed) smap[V] {
	return smap[V]{seed: seed, shards: &[viewShards]map[string]V{}}
}

func (m smap[V]) shardIndex(key string) int {
	return int(maphash.String(m.seed, key) % viewShards)
}

func (m smap[V]) get(key string) (V, bool) {
	v, ok := m.shards[m.shardIndex(key)][key]
	return v, ok
}

// getBytes looks key up without converting it to a string (no allocation).
func (m smap[V]) getBytes(key []byte) (V, bool) {
	v, ok := m.shards[maphash.Bytes(m.seed, key)%viewShards][string(key)]
	return v, ok
}

func (m smap[V]) len() int {
	n := 0
	for _, s := range m.shards {
		n += len(s)
	}
	return n
}

// each calls fn for every entry until fn returns false.
func (m smap[V]) each(fn func(string, V) bool) {
	for _, s := range m.shards {
		for k, v := range s {
			if !fn(k, v) {
				return
			}
		}
	}
}
