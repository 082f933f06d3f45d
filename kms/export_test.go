package kms

// StandInVault exposes the Vault transit stand-in (vault_standin_test.go)
// to the external test package, which runs it behind a real server.
type StandInVault struct {
	URL           string
	Token         string
	Latest        func(name string) int // newest version of a transit key
	MinDecryption func(name string) int // its min_decryption_version
	Close         func()
}

// NewStandInVault starts a stand-in on the default mount, without namespace.
func NewStandInVault() *StandInVault {
	s := newVaultStandIn(standInToken, "", "transit", false)
	return &StandInVault{URL: s.URL, Token: standInToken, Latest: s.latest, MinDecryption: s.minDecryption, Close: s.Close}
}
