package enforcement

import (
	"fmt"
	"slices"
	"strings"

	"github.com/allsource/guard/auth"
)

// RouteRule maps requests to the permission they need and their rate-limit
// route class (a key of the tenant's RateLimit.RouteCosts).
type RouteRule struct {
	// Method is an HTTP method, or "" / "*" for any.
	Method string
	// Path is an exact path; "*" inside it matches one path segment, and a
	// final "*" matches the rest ("/admin/*" matches /admin/ and everything
	// below it, "/orders/*/refund" one order's refund).
	Path string
	// Permission the caller's role must hold.
	Permission auth.Permission
	// Class is the route class whose cost the request takes (default cost 1).
	Class string
}

// RouteMap is the operator-configured route → permission map. The most
// specific rule wins: an exact path before any prefix, a longer prefix before
// a shorter one, a rule naming the method before one for any method. A
// request no rule matches needs read for GET, HEAD and OPTIONS and write for
// every other method, in route class "".
//
// A RouteMap is immutable and safe for concurrent use.
type RouteMap struct {
	rules []RouteRule
}

// NewRouteMap orders the rules by specificity.
func NewRouteMap(rules ...RouteRule) (*RouteMap, error) {
	out := make([]RouteRule, 0, len(rules))
	for _, r := range rules {
		r.Method = strings.ToUpper(strings.TrimSpace(r.Method))
		if r.Method == "*" {
			r.Method = ""
		}
		if r.Method != "" && !isToken(r.Method) {
			return nil, fmt.Errorf("route %q: bad method %q", r.Path, r.Method)
		}
		if !strings.HasPrefix(r.Path, "/") {
			return nil, fmt.Errorf("route %q: the path must start with /", r.Path)
		}
		if r.Permission == 0 {
			return nil, fmt.Errorf("route %q: no permission", r.Path)
		}
		if len(r.Class) > 64 {
			return nil, fmt.Errorf("route %q: class longer than 64 bytes", r.Path)
		}
		out = append(out, r)
	}
	slices.SortStableFunc(out, func(a, b RouteRule) int {
		ap, bp := strings.Contains(a.Path, "*"), strings.Contains(b.Path, "*")
		switch {
		case ap != bp: // exact first
			if !ap {
				return -1
			}
			return 1
		case len(a.Path) != len(b.Path):
			return len(b.Path) - len(a.Path)
		case (a.Method == "") != (b.Method == ""):
			if a.Method != "" {
				return -1
			}
			return 1
		}
		return 0
	})
	return &RouteMap{rules: out}, nil
}

// ParseRouteMap parses the -routes flag: rules separated by ";" or new lines,
// each "[METHOD] PATH=PERMISSION[:CLASS]", e.g.
//
//	GET /reports/*=read:reports; POST /admin/*=admin; * /billing/*=manage_tenants:billing
//
// Permissions are read, write, admin, metrics, manage_schemas,
// manage_pipelines and manage_tenants. Empty input is the default map.
func ParseRouteMap(spec string) (*RouteMap, error) {
	var rules []RouteRule
	for _, line := range strings.FieldsFunc(spec, func(r rune) bool { return r == ';' || r == '\n' }) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		lhs, rhs, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("route %q: want [METHOD] PATH=PERMISSION[:CLASS]", line)
		}
		var r RouteRule
		f := strings.Fields(lhs)
		switch len(f) {
		case 1:
			r.Path = f[0]
		case 2:
			r.Method, r.Path = f[0], f[1]
		default:
			return nil, fmt.Errorf("route %q: want [METHOD] PATH=PERMISSION[:CLASS]", line)
		}
		perm, class, _ := strings.Cut(strings.TrimSpace(rhs), ":")
		p, err := auth.ParsePermission(strings.TrimSpace(perm))
		if err != nil {
			return nil, fmt.Errorf("route %q: %w", line, err)
		}
		r.Permission, r.Class = p, strings.TrimSpace(class)
		rules = append(rules, r)
	}
	return NewRouteMap(rules...)
}

// Match returns the permission and route class a request needs.
func (m *RouteMap) Match(method, path string) (auth.Permission, string) {
	if m != nil {
		for i := range m.rules {
			r := &m.rules[i]
			if r.Method != "" && r.Method != method {
				continue
			}
			if matchPath(r.Path, path) {
				return r.Permission, r.Class
			}
		}
	}
	switch method {
	case "GET", "HEAD", "OPTIONS":
		return auth.PermRead, ""
	}
	return auth.PermWrite, ""
}

// matchPath matches a route pattern: literal text, "*" for one segment, and
// a final "*" for the rest of the path.
func matchPath(pattern, path string) bool {
	for {
		i := strings.IndexByte(pattern, '*')
		if i < 0 {
			return pattern == path
		}
		if !strings.HasPrefix(path, pattern[:i]) {
			return false
		}
		path, pattern = path[i:], pattern[i+1:]
		if pattern == "" {
			return true
		}
		j := strings.IndexByte(path, '/')
		if j < 0 {
			j = len(path)
		}
		path = path[j:]
	}
}
