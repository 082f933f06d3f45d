package auth

import (
	"fmt"
	"strings"
)

// Role is a tenant-scoped role. The zero value is not a valid role.
type Role string

// The tenant roles, and the cluster-scoped operator. The operator is not a tenant
// role: it is held only by the bootstrap credential and credentials it mints.
const (
	RoleAdmin          Role = "admin"
	RoleDeveloper      Role = "developer"
	RoleReadOnly       Role = "readonly"
	RoleServiceAccount Role = "serviceaccount"
	RoleOperator       Role = "operator"
)

// Permission is one capability a role may hold.
type Permission uint8

const (
	PermRead Permission = 1 << iota
	PermWrite
	PermAdmin
	PermMetrics
	PermManageSchemas
	PermManagePipelines
	PermManageTenants
)

var permNames = []struct {
	p    Permission
	name string
}{
	{PermRead, "read"}, {PermWrite, "write"}, {PermAdmin, "admin"}, {PermMetrics, "metrics"},
	{PermManageSchemas, "manage_schemas"}, {PermManagePipelines, "manage_pipelines"},
	{PermManageTenants, "manage_tenants"},
}

func (p Permission) String() string {
	for _, n := range permNames {
		if n.p == p {
			return n.name
		}
	}
	return fmt.Sprintf("permission(%d)", uint8(p))
}

// ParsePermission parses the lower-case name of a permission.
func ParsePermission(s string) (Permission, error) {
	for _, n := range permNames {
		if n.name == strings.ToLower(s) {
			return n.p, nil
		}
	}
	return 0, fmt.Errorf("unknown permission %q", s)
}

const allPerms = PermRead | PermWrite | PermAdmin | PermMetrics | PermManageSchemas | PermManagePipelines | PermManageTenants

// rolePerms is the permission matrix of DESIGN.md §4. An admin's ManageTenants is
// limited to its own tenant; the checks that enforce that live with the callers.
var rolePerms = map[Role]Permission{
	RoleAdmin:          allPerms,
	RoleDeveloper:      PermRead | PermWrite | PermMetrics | PermManageSchemas | PermManagePipelines,
	RoleReadOnly:       PermRead | PermMetrics,
	RoleServiceAccount: PermRead | PermWrite,
	RoleOperator:       allPerms,
}

// rank orders roles for the "no credential above your own role" rule. Roles of
// equal rank cannot grant each other (a developer cannot mint a serviceaccount key
// and vice versa) unless the permissions are a subset, which Covers checks.
var rank = map[Role]int{
	RoleReadOnly:       1,
	RoleServiceAccount: 2,
	RoleDeveloper:      3,
	RoleAdmin:          4,
	RoleOperator:       5,
}

// ParseRole parses a role name. The operator role is accepted only when
// allowOperator is set: tenants can never hold it.
func ParseRole(s string, allowOperator bool) (Role, error) {
	r := Role(strings.ToLower(strings.TrimSpace(s)))
	if _, ok := rolePerms[r]; !ok || (r == RoleOperator && !allowOperator) {
		return "", fmt.Errorf("unknown role %q (want admin, developer, readonly or serviceaccount)", s)
	}
	return r, nil
}

// Valid reports whether r is a tenant role.
func (r Role) Valid() bool { _, ok := rolePerms[r]; return ok && r != RoleOperator }

// Has reports whether the role holds permission p.
func (r Role) Has(p Permission) bool { return rolePerms[r]&p == p && p != 0 }

// Permissions returns the role's permission set.
func (r Role) Permissions() Permission { return rolePerms[r] }

// Covers reports whether a holder of role r may grant role other: other's
// permissions must be a subset of r's and other must not outrank r.
func (r Role) Covers(other Role) bool {
	ro, ok1 := rolePerms[r]
	oo, ok2 := rolePerms[other]
	if !ok1 || !ok2 {
		return false
	}
	return oo&^ro == 0 && rank[other] <= rank[r]
}
