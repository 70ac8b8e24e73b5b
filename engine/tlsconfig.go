package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"sync"
)

// Profile is a client TLS personality as the sender defines it (sender/profiles.py).
type Profile struct {
	MaxVersion uint16   `json:"max_version"` // tls.VersionTLS12 or tls.VersionTLS13
	Suites     []uint16 `json:"suites"`      // TLS 1.2 suites in OpenSSL's order; none: Go's
	Tickets    bool     `json:"tickets"`
	Resume     bool     `json:"resume"` // offer the previous session with the same server
}

type configKey struct {
	maxVersion uint16
	suites     string
	tickets    bool
	resume     bool
	serverName string
}

// tlsConfigs builds each personality's config once: Go's session cache lives in it.
type tlsConfigs struct {
	roots *x509.CertPool // nil: accept any certificate
	mu    sync.Mutex
	built map[configKey]*tls.Config
}

func newTLSConfigs(caFile string) (*tlsConfigs, error) {
	configs := &tlsConfigs{built: map[configKey]*tls.Config{}}
	if caFile == "" {
		return configs, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	configs.roots = x509.NewCertPool()
	if !configs.roots.AppendCertsFromPEM(pem) {
		return nil, errors.New(caFile + " holds no PEM certificate")
	}
	return configs, nil
}

func (c *tlsConfigs) get(profile Profile, serverName string) *tls.Config {
	key := configKey{profile.MaxVersion, string(uint16Bytes(profile.Suites)), profile.Tickets,
		profile.Resume, serverName}
	c.mu.Lock()
	defer c.mu.Unlock()
	if config, ok := c.built[key]; ok {
		return config
	}
	config := &tls.Config{
		MinVersion: tls.VersionTLS12,
		MaxVersion: profile.MaxVersion,
		ServerName: serverName,
		// The groups OpenSSL 3.0 offers first; Go's default would add a post-quantum key
		// share of over a kilobyte that the receiver's OpenSSL cannot use.
		CurvePreferences:       []tls.CurveID{tls.X25519, tls.CurveP256, tls.CurveP384},
		SessionTicketsDisabled: !profile.Tickets,
	}
	if len(profile.Suites) > 0 {
		config.CipherSuites = profile.Suites
	}
	if profile.Resume {
		config.ClientSessionCache = tls.NewLRUClientSessionCache(64)
	}
	switch {
	case c.roots == nil:
		config.InsecureSkipVerify = true
	case serverName == "":
		// Nothing named, nothing to check but the chain (as the Python client does).
		config.InsecureSkipVerify = true
		config.VerifyConnection = c.verifyChain
	default:
		config.RootCAs = c.roots
	}
	c.built[key] = config
	return config
}

func (c *tlsConfigs) verifyChain(state tls.ConnectionState) error {
	if len(state.PeerCertificates) == 0 {
		return errors.New("the server sent no certificate")
	}
	intermediates := x509.NewCertPool()
	for _, certificate := range state.PeerCertificates[1:] {
		intermediates.AddCert(certificate)
	}
	_, err := state.PeerCertificates[0].Verify(x509.VerifyOptions{
		Roots: c.roots, Intermediates: intermediates})
	if err != nil {
		return &tls.CertificateVerificationError{
			UnverifiedCertificates: state.PeerCertificates, Err: err}
	}
	return nil
}

func uint16Bytes(values []uint16) []byte {
	out := make([]byte, 0, 2*len(values))
	for _, value := range values {
		out = append(out, byte(value>>8), byte(value))
	}
	return out
}
