package server

import (
	"strings"
	"testing"

	"github.com/allsource/guard/threat"
)

// A threat setting the constructors would refuse stops Config.Validate,
// before raft or the listener start.
func TestThreatSettingsValidated(t *testing.T) {
	const secret = "webhook-secret-0123456789"
	for name, tc := range map[string]struct {
		cfg  ThreatConfig
		want string // "" = valid
	}{
		"defaults":          {ThreatConfig{}, ""},
		"webhook":           {ThreatConfig{WebhookURL: "https://hooks.example/a", WebhookSecret: secret}, ""},
		"no secret":         {ThreatConfig{WebhookURL: "https://hooks.example/a"}, "-webhook-secret is required"},
		"short secret":      {ThreatConfig{WebhookURL: "https://hooks.example/a", WebhookSecret: "short"}, "at least 16 bytes"},
		"bad url":           {ThreatConfig{WebhookURL: "ftp://hooks.example/a", WebhookSecret: secret}, "http(s)"},
		"brute force of 1":  {ThreatConfig{Detect: threat.Config{BruteForceFailures: 1}}, "brute-force"},
		"negative velocity": {ThreatConfig{Detect: threat.Config{VelocityWindow: -1}}, "velocity"},
		"exfil factor 0.5":  {ThreatConfig{Detect: threat.Config{ExfilFactor: 0.5}}, "exfiltration"},
		"disabled":          {ThreatConfig{Disabled: true, WebhookURL: "https://hooks.example/a"}, ""},
	} {
		c := Config{Dev: true, DataDir: t.TempDir(), LogLevel: "info", LogFormat: "text", MaxBodyBytes: 1 << 20, Threat: tc.cfg}
		err := c.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: error %v, want one containing %q", name, err, tc.want)
		}
		if tc.cfg.Detect.BruteForceFailures == 0 && c.Threat.Detect.BruteForceFailures != 0 {
			t.Errorf("%s: Validate changed the configured detector thresholds", name)
		}
	}
}
