package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
)

var (
	errStartTLSNotOffered = errors.New("the server's EHLO does not offer STARTTLS")
	errReplyTooLong       = errors.New("the server's reply ran past 64 KiB without ending")
	errServerClosed       = errors.New("the server closed the connection")
)

type replyError struct {
	code    int
	message string
}

func (e *replyError) Error() string { return strconv.Itoa(e.code) + " " + e.message }

type handshakeError struct{ err error }

func (e *handshakeError) Error() string { return e.err.Error() }

// describe names a failure as the Python client does ("smtp_550: ...", "TimeoutError: ...",
// "SSLError: [SSL: TLSV1_ALERT_ACCESS_DENIED] ..."), so results read the same either way.
func describe(err error, timeoutS float64) *Failure {
	var reply *replyError
	if errors.As(err, &reply) {
		return &Failure{Code: reply.code, Message: reply.message,
			Text: "smtp_" + strconv.Itoa(reply.code) + ": " + reply.message}
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return &Failure{Text: "TimeoutError: no reply within " +
			strconv.FormatFloat(timeoutS, 'g', -1, 64) + " s"}
	}
	var handshake *handshakeError
	if errors.As(err, &handshake) {
		return &Failure{Text: describeTLS(handshake.err)}
	}
	switch {
	case errors.Is(err, errStartTLSNotOffered):
		return &Failure{Text: "StartTlsNotOffered: " + err.Error()}
	case errors.Is(err, errReplyTooLong):
		return &Failure{Text: "ConnectionAbortedError: " + err.Error()}
	case errors.Is(err, errServerClosed), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EPIPE):
		return &Failure{Text: "ConnectionResetError: " + err.Error()}
	case errors.Is(err, syscall.ECONNREFUSED):
		return &Failure{Text: "ConnectionRefusedError: " + err.Error()}
	}
	return &Failure{Text: "OSError: " + err.Error()}
}

// describeTLS gives OpenSSL's reason names for what Go's TLS client reports.
func describeTLS(err error) string {
	var unknownAuthority x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var invalid x509.CertificateInvalidError
	var verification *tls.CertificateVerificationError
	if errors.As(err, &unknownAuthority) || errors.As(err, &hostname) ||
		errors.As(err, &invalid) || errors.As(err, &verification) {
		return "SSLCertVerificationError: [SSL: CERTIFICATE_VERIFY_FAILED] certificate " +
			"verify failed: " + err.Error()
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return "TimeoutError: " + err.Error()
	}
	var opError *net.OpError
	if errors.As(err, &opError) && opError.Op == "remote error" {
		alert := strings.TrimPrefix(opError.Err.Error(), "tls: ")
		name := strings.ToUpper(strings.NewReplacer(" ", "_", "-", "_").Replace(alert))
		return "SSLError: [SSL: TLSV1_ALERT_" + name + "] tlsv1 alert " + alert
	}
	if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, errServerClosed) {
		return "SSLError: [SSL] the server closed the connection during the handshake: " +
			err.Error()
	}
	return "SSLError: [SSL] " + err.Error()
}
