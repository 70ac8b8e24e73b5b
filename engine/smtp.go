package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strconv"
	"time"
)

// maxReplyBytes is far above any real reply (RFC 5321: 512 bytes per line).
const maxReplyBytes = 64 * 1024

// Job is one connection: where, plain or STARTTLS, and its messages, dot-stuffed.
type Job struct {
	ID         int64    `json:"id"`
	Address    string   `json:"address"`
	Port       int      `json:"port"`
	ServerName string   `json:"server_name"` // sent as SNI and verified; "" names no server
	TLS        bool     `json:"tls"`
	Bodies     []string `json:"bodies"` // each ends in CRLF.CRLF
	Sizes      []int    `json:"sizes"`  // each message's size before dot-stuffing
	Ehlo       string   `json:"ehlo"`
	MailFrom   string   `json:"mail_from"`
	RcptTo     string   `json:"rcpt_to"`
	TimeoutS   float64  `json:"timeout_s"` // for each step, as an SMTP client waits
	Phases     bool     `json:"phases"`    // time every command
	QuickAck   bool     `json:"quick_ack"`
	Profile    Profile  `json:"profile"`
}

// Mark is a point of the conversation: when, and the bytes on the wire so far.
type Mark struct {
	Ns       int64 `json:"ns"` // wall clock, from a monotonic offset
	Sent     int64 `json:"sent"`
	Received int64 `json:"received"`
}

// Accepted is a message the server took (its DATA answered 250).
type Accepted struct {
	Code  int    `json:"code"`
	Reply string `json:"reply"`
	At    Mark   `json:"at"`
}

// Phase is one command and its reply; Message is the index of the message it is charged to.
type Phase struct {
	Name    string `json:"name"`
	Start   int64  `json:"start"`
	End     int64  `json:"end"`
	Message int    `json:"message"`
}

// TLSInfo is the handshake that completed.
type TLSInfo struct {
	Version   uint16  `json:"version"`
	CipherID  uint16  `json:"cipher_id"`
	Resumed   bool    `json:"resumed"`
	StartedNs int64   `json:"started_ns"`
	Ms        float64 `json:"ms"`
}

// Failure is what ended the conversation early, described as the Python client does.
type Failure struct {
	Code    int    `json:"code,omitempty"`    // an SMTP reply's code
	Message string `json:"message,omitempty"` // its text
	Text    string `json:"text"`
}

// Result is one connection's account.
type Result struct {
	ID         int64      `json:"id"`
	Start      Mark       `json:"start"`
	ConnectMs  *float64   `json:"connect_ms"`
	TLS        *TLSInfo   `json:"tls"`
	TLSRefused bool       `json:"tls_refused"`
	Accepted   []Accepted `json:"accepted"`
	Final      *Mark      `json:"final"` // before the socket closed
	Phases     []Phase    `json:"phases,omitempty"`
	Failure    *Failure   `json:"failure"`
}

// session holds a conversation's state between steps.
type session struct {
	job      *Job
	result   *Result
	wall     time.Time // start, with its monotonic reading
	raw      net.Conn  // the TCP connection
	conn     net.Conn  // raw, then the TLS connection over it
	reader   *bufio.Reader
	timeout  time.Duration
	phaseAt  int64
	messages int
}

func (s *session) now() int64 { return s.wall.UnixNano() + int64(time.Since(s.wall)) }

func (s *session) mark() Mark {
	if s.raw == nil { // no connection came
		return Mark{Ns: s.now()}
	}
	received, sent := wireBytes(s.raw)
	return Mark{Ns: s.now(), Sent: sent, Received: received}
}

func converse(job *Job, configs *tlsConfigs) *Result {
	s := &session{job: job, wall: time.Now(), result: &Result{ID: job.ID},
		timeout: time.Duration(job.TimeoutS * float64(time.Second))}
	s.result.Start = Mark{Ns: s.wall.UnixNano()}
	s.phaseAt = s.result.Start.Ns
	if err := s.run(configs); err != nil {
		s.result.Failure = describe(err, job.TimeoutS)
		if s.result.Final == nil {
			final := s.mark()
			s.result.Final = &final
		}
	}
	if s.raw != nil {
		s.raw.Close()
	}
	return s.result
}

func (s *session) run(configs *tlsConfigs) error {
	dialer := net.Dialer{Timeout: s.timeout}
	address := net.JoinHostPort(s.job.Address, strconv.Itoa(s.job.Port))
	conn, err := dialer.Dial("tcp", address)
	if err != nil {
		return err
	}
	s.raw = conn
	s.conn = conn
	s.reader = bufio.NewReaderSize(s.conn, 4096)
	if err := s.expect("smtp.connect", 220); err != nil {
		return err
	}
	connectMs := float64(s.now()-s.result.Start.Ns) / 1e6
	s.result.ConnectMs = &connectMs
	ehlo, err := s.command("smtp.ehlo", "EHLO "+s.job.Ehlo, 250)
	if err != nil {
		return err
	}
	if s.job.TLS {
		if !bytes.Contains(bytes.ToUpper(ehlo), []byte("STARTTLS")) {
			return errStartTLSNotOffered
		}
		if err := s.startTLS(configs); err != nil {
			return err
		}
	}
	for index, body := range s.job.Bodies {
		s.messages = index
		if _, err := s.command("smtp.mail", "MAIL FROM:<"+s.job.MailFrom+">", 250); err != nil {
			return err
		}
		if _, err := s.command("smtp.rcpt", "RCPT TO:<"+s.job.RcptTo+">", 250); err != nil {
			return err
		}
		if _, err := s.command("smtp.data", "DATA", 354); err != nil {
			return err
		}
		code, text, err := s.exchange("smtp.data", []byte(body))
		if err != nil {
			return err
		}
		if code != 250 {
			return &replyError{code: code, message: messageOf(text)}
		}
		s.result.Accepted = append(s.result.Accepted,
			Accepted{Code: code, Reply: messageOf(text), At: s.mark()})
	}
	// Every message is in: QUIT's answer, or its absence, does not matter.
	s.exchange("smtp.quit", []byte("QUIT\r\n"))
	final := s.mark()
	s.result.Final = &final
	if tlsConn, ok := s.conn.(*tls.Conn); ok {
		tlsConn.SetDeadline(time.Now().Add(s.timeout))
		tlsConn.CloseWrite() // close_notify, as the Python client's unwrap sends
	}
	return nil
}

func (s *session) startTLS(configs *tlsConfigs) error {
	code, text, err := s.exchange("smtp.starttls", []byte("STARTTLS\r\n"))
	if err != nil {
		return err
	}
	if code == 454 { // as opportunistic bots do: carry on in plain text
		s.result.TLSRefused = true
		return nil
	}
	if code != 220 {
		return &replyError{code: code, message: messageOf(text)}
	}
	config := configs.get(s.job.Profile, s.job.ServerName)
	client := tls.Client(s.raw, config)
	started := s.now()
	client.SetDeadline(time.Now().Add(s.timeout))
	if err := client.Handshake(); err != nil {
		return &handshakeError{err}
	}
	state := client.ConnectionState()
	s.result.TLS = &TLSInfo{Version: state.Version, CipherID: state.CipherSuite,
		Resumed: state.DidResume, StartedNs: started, Ms: float64(s.now()-started) / 1e6}
	s.conn = client
	s.reader = bufio.NewReaderSize(client, 4096)
	s.phase("smtp.starttls") // the handshake belongs to the STARTTLS phase
	_, err = s.command("smtp.ehlo", "EHLO "+s.job.Ehlo, 250)
	return err
}

// command writes one command and wants the reply's code to be `want`.
func (s *session) command(name, line string, want int) ([]byte, error) {
	code, text, err := s.exchange(name, []byte(line+"\r\n"))
	if err != nil {
		return nil, err
	}
	if code != want {
		return nil, &replyError{code: code, message: messageOf(text)}
	}
	return text, nil
}

// exchange writes and reads the whole reply; STARTTLS's 220 is timed with the handshake.
func (s *session) exchange(name string, data []byte) (int, []byte, error) {
	s.conn.SetDeadline(time.Now().Add(s.timeout))
	if _, err := s.conn.Write(data); err != nil {
		return 0, nil, err
	}
	if s.job.QuickAck {
		quickAck(s.raw)
	}
	code, text, err := s.reply()
	if err == nil && !(name == "smtp.starttls" && code == 220) {
		s.phase(name)
	}
	return code, text, err
}

func (s *session) expect(name string, want int) error {
	s.conn.SetDeadline(time.Now().Add(s.timeout))
	code, text, err := s.reply()
	if err != nil {
		return err
	}
	s.phase(name)
	if code != want {
		return &replyError{code: code, message: messageOf(text)}
	}
	return nil
}

func (s *session) phase(name string) {
	if !s.job.Phases {
		return
	}
	now := s.now()
	s.result.Phases = append(s.result.Phases,
		Phase{Name: name, Start: s.phaseAt, End: now, Message: s.messages})
	s.phaseAt = now
}

// reply reads lines to the one whose fourth byte is not '-'; its code, and all its lines.
func (s *session) reply() (int, []byte, error) {
	var text []byte
	for {
		line, err := s.reader.ReadSlice('\n')
		if err == bufio.ErrBufferFull || (err == nil && !bytes.HasSuffix(line, []byte("\r\n"))) {
			text = append(text, line...)
			if len(text) > maxReplyBytes {
				return 0, nil, errReplyTooLong
			}
			continue
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return 0, nil, errServerClosed
			}
			return 0, nil, err
		}
		text = append(text, line...)
		if len(text) > maxReplyBytes {
			return 0, nil, errReplyTooLong
		}
		start := bytes.LastIndex(text[:len(text)-2], []byte("\r\n"))
		last := text[start+2:]
		if start < 0 {
			last = text
		}
		if len(last) >= 4 && last[3] == '-' {
			continue
		}
		text = text[:len(text)-2]
		code := 0 // the last line's, as the Python client reads it
		if len(last) >= 3 && isDigits(last[:3]) {
			code, _ = strconv.Atoi(string(last[:3]))
		}
		return code, text, nil
	}
}

// messageOf is a reply's text without the codes: each line from its fifth byte.
func messageOf(text []byte) string {
	lines := bytes.Split(text, []byte("\r\n"))
	parts := make([]string, len(lines))
	for i, line := range lines {
		if len(line) > 4 {
			parts[i] = string(bytes.ToValidUTF8(line[4:], []byte("\uFFFD")))
		}
	}
	return joinLines(parts)
}

func joinLines(parts []string) string {
	var out bytes.Buffer
	for i, part := range parts {
		if i > 0 {
			out.WriteByte('\n')
		}
		out.WriteString(part)
	}
	return out.String()
}

func isDigits(text []byte) bool {
	for _, c := range text {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
