//! The sender engine's rustls client, for C (rustls_client.h): a profile's configuration, and
//! one TLS session on a connected non-blocking socket, driven by the engine's epoll loop as it
//! drives OpenSSL's (handshake, read, write, each saying whether it waits for the socket).
//! The socket's bytes are counted by the kernel (TCP_INFO), not here.
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientSessionStore, Resumption, Tls12Resumption, WebPkiServerVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, HandshakeKind,
    NamedGroup, ProtocolVersion, RootCertStore, SignatureScheme, SupportedCipherSuite,
};
use std::ffi::{c_char, c_int, c_long, CStr};
use std::io::{self, IoSlice, Read, Write};
use std::sync::Arc;

/// The sender without a CA file (Python's CERT_NONE): any certificate, but the handshake's
/// signature is checked.
#[derive(Debug)]
pub struct NoChainCheck(pub Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoChainCheck {
    fn verify_server_cert(&self, _: &CertificateDer<'_>, _: &[CertificateDer<'_>], _: &ServerName<'_>,
                          _: &[u8], _: UnixTime) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct)
        -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct)
        -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A CA file but no name to check (a profile without SNI: Python's check_hostname off): the
/// chain is verified, the name is not.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(&self, end: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>],
                          name: &ServerName<'_>, ocsp: &[u8], now: UnixTime)
        -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end, intermediates, name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            verdict => verdict,
        }
    }
    fn verify_tls12_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct)
        -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct)
        -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Tickets are asked for (as OpenSSL's client does) but never kept: every connection is a full
/// handshake, as the sender's OpenSSL profiles make them.
#[derive(Debug)]
struct NothingKept;

impl ClientSessionStore for NothingKept {
    fn set_kx_hint(&self, _: ServerName<'static>, _: NamedGroup) {}
    fn kx_hint(&self, _: &ServerName<'_>) -> Option<NamedGroup> {
        None
    }
    fn set_tls12_session(&self, _: ServerName<'static>, _: rustls::client::Tls12ClientSessionValue) {}
    fn tls12_session(&self, _: &ServerName<'_>) -> Option<rustls::client::Tls12ClientSessionValue> {
        None
    }
    fn remove_tls12_session(&self, _: &ServerName<'static>) {}
    fn insert_tls13_ticket(&self, _: ServerName<'static>, _: rustls::client::Tls13ClientSessionValue) {}
    fn take_tls13_ticket(&self, _: &ServerName<'static>) -> Option<rustls::client::Tls13ClientSessionValue> {
        None
    }
}

fn build_config(ca_file: Option<&str>, tls13: bool, tickets: bool, check_hostname: bool, sni: bool)
    -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if tls13 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS12]
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions).map_err(|e| e.to_string())?;
    let verifier: Arc<dyn ServerCertVerifier> = match ca_file {
        None => Arc::new(NoChainCheck(provider.clone())),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| format!("{path}: {e}"))? {
                roots.add(cert.map_err(|e| format!("{path}: {e}"))?).map_err(|e| e.to_string())?;
            }
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build().map_err(|e| e.to_string())?;
            if check_hostname { webpki } else { Arc::new(ChainOnly(webpki)) }
        }
    };
    let mut config = builder.dangerous().with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.enable_sni = sni;
    // SSLKEYLOGFILE, as browsers and curl honour it: the NSS key log format Wireshark reads.
    config.key_log = Arc::new(rustls::KeyLogFile::new());
    config.resumption = Resumption::store(Arc::new(NothingKept)).tls12_resumption(
        if tickets { Tls12Resumption::SessionIdOrTickets } else { Tls12Resumption::SessionIdOnly });
    Ok(config)
}

/// Copies `text` into the caller's buffer, cut to fit, always terminated.
fn put_text(text: &str, out: *mut c_char, len: usize) {
    if out.is_null() || len == 0 {
        return;
    }
    let bytes = text.as_bytes();
    let n = bytes.len().min(len - 1);
    // SAFETY: the caller gives `len` writable bytes at `out`.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), out as *mut u8, n);
        *out.add(n) = 0;
    }
}

/// A profile's configuration, shared by its connections.
pub struct Config(Arc<ClientConfig>);

/// # Safety
/// `ca_file` is NULL or a C string; `error` has `error_len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn rc_config_new(ca_file: *const c_char, tls13: c_int, tickets: c_int,
                                       check_hostname: c_int, sni: c_int, error: *mut c_char,
                                       error_len: usize) -> *mut Config {
    let ca_file = if ca_file.is_null() { None } else { CStr::from_ptr(ca_file).to_str().ok() };
    match build_config(ca_file, tls13 != 0, tickets != 0, check_hostname != 0, sni != 0) {
        Ok(config) => Box::into_raw(Box::new(Config(Arc::new(config)))),
        Err(why) => {
            put_text(&why, error, error_len);
            std::ptr::null_mut()
        }
    }
}

/// Another handle on the same configuration (a connection keeps one while it lives).
///
/// # Safety
/// `config` comes from rc_config_new or rc_config_clone and is not yet freed.
#[no_mangle]
pub unsafe extern "C" fn rc_config_clone(config: *const Config) -> *mut Config {
    Box::into_raw(Box::new(Config((*config).0.clone())))
}

/// # Safety
/// `config` is NULL or comes from rc_config_new or rc_config_clone, freed once.
#[no_mangle]
pub unsafe extern "C" fn rc_config_free(config: *mut Config) {
    if !config.is_null() {
        drop(Box::from_raw(config));
    }
}

/// The connected socket, read and written as the kernel takes it (MSG_NOSIGNAL: a peer gone
/// is an EPIPE error, not a signal).
struct Socket(c_int);

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }
    /// Every waiting record in one system call, not one call per record.
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        // SAFETY: IoSlice has iovec's layout on Unix; the message names only those buffers.
        let n = unsafe {
            let mut message: libc::msghdr = std::mem::zeroed();
            message.msg_iov = bufs.as_ptr() as *mut libc::iovec;
            message.msg_iovlen = bufs.len() as _;
            libc::sendmsg(self.0, &message, libc::MSG_NOSIGNAL)
        };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub const RC_DONE: c_int = 0;
pub const RC_WANT_READ: c_int = 1;
pub const RC_WANT_WRITE: c_int = 2;
pub const RC_CLOSED: c_int = 3; /* the peer's close_notify */
pub const RC_EOF: c_int = 4; /* the socket ended without close_notify */
pub const RC_TLS_ERROR: c_int = -1; /* rc_error tells */
pub const RC_OS_ERROR: c_int = -2; /* errno tells */

/// One session on one socket.
pub struct Conn {
    tls: ClientConnection,
    socket: Socket,
    buffered: usize, /* decrypted bytes not yet read */
    peer_closed: bool, /* its close_notify processed: the next read says so */
    error: Option<rustls::Error>,
}

fn os_error(e: &io::Error) -> c_int {
    // SAFETY: errno is the calling thread's.
    unsafe { *libc::__errno_location() = e.raw_os_error().unwrap_or(libc::EIO) };
    RC_OS_ERROR
}

impl Conn {
    /// Sends what TLS has waiting; RC_WANT_WRITE when the socket has no room for all of it.
    fn flush(&mut self) -> c_int {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.socket) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return RC_WANT_WRITE,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return os_error(&e),
            }
        }
        RC_DONE
    }

    /// One read of the socket into TLS, then its records processed: RC_DONE when something
    /// came, RC_EOF when the socket ended (what came before its end processed too).
    fn receive(&mut self) -> c_int {
        let ended = match self.tls.read_tls(&mut self.socket) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return RC_WANT_READ,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return RC_DONE,
            Err(e) => return os_error(&e),
        };
        match self.tls.process_new_packets() {
            Ok(state) => {
                self.buffered = state.plaintext_bytes_to_read();
                self.peer_closed = state.peer_has_closed();
                if ended { RC_EOF } else { RC_DONE }
            }
            Err(e) => {
                self.error = Some(e);
                self.flush(); /* the alert, if the socket takes it */
                RC_TLS_ERROR
            }
        }
    }

    fn handshake(&mut self) -> c_int {
        loop {
            let sent = self.flush();
            if sent != RC_DONE || !self.tls.is_handshaking() {
                return sent;
            }
            let received = self.receive();
            if received != RC_DONE {
                return received;
            }
        }
    }

    /// After the socket's end the reader says what it was: the peer's close_notify (Ok(0)) or
    /// not (an error), once what came before it is read.
    fn read(&mut self, buf: &mut [u8]) -> (usize, c_int) {
        loop {
            match self.tls.reader().read(buf) {
                Ok(0) => return (0, RC_CLOSED),
                Ok(n) => {
                    self.buffered = self.buffered.saturating_sub(n);
                    return (n, RC_DONE);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return (0, RC_EOF),
            }
            match self.receive() {
                RC_DONE => {
                    if self.tls.wants_write() && self.flush() < 0 {
                        return (0, RC_OS_ERROR);
                    }
                }
                RC_EOF => {}
                other => return (0, other),
            }
        }
    }
}

/// # Safety
/// `config` is live; `server_name` is a C string (a name, or an address: then no SNI);
/// `fd` is a connected socket that outlives the session; `error` has `error_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn rc_conn_new(config: *const Config, server_name: *const c_char, fd: c_int,
                                     error: *mut c_char, error_len: usize) -> *mut Conn {
    let name = match CStr::from_ptr(server_name).to_str().ok()
        .and_then(|text| ServerName::try_from(text.to_owned()).ok()) {
        Some(name) => name,
        None => {
            put_text("the server's name is not a DNS name or an address", error, error_len);
            return std::ptr::null_mut();
        }
    };
    match ClientConnection::new((*config).0.clone(), name) {
        Ok(mut tls) => {
            tls.set_buffer_limit(None); /* a message is taken whole, as one write */
            Box::into_raw(Box::new(Conn { tls, socket: Socket(fd), buffered: 0, peer_closed: false,
                                            error: None }))
        }
        Err(e) => {
            put_text(&e.to_string(), error, error_len);
            std::ptr::null_mut()
        }
    }
}

/// # Safety
/// `conn` is NULL or from rc_conn_new, freed once. The socket is the caller's to close.
#[no_mangle]
pub unsafe extern "C" fn rc_conn_free(conn: *mut Conn) {
    if !conn.is_null() {
        drop(Box::from_raw(conn));
    }
}

/// Moves the handshake on: RC_DONE once it is complete and sent, else what it waits for or
/// how it failed.
///
/// # Safety
/// `conn` is live.
#[no_mangle]
pub unsafe extern "C" fn rc_handshake(conn: *mut Conn) -> c_int {
    (*conn).handshake()
}

/// Decrypted bytes into `buf`: their count, with `*status` RC_DONE; else 0 with what it waits
/// for (RC_WANT_READ), RC_CLOSED, RC_EOF or an error.
///
/// # Safety
/// `conn` is live; `buf` has `len` writable bytes; `status` is writable.
#[no_mangle]
pub unsafe extern "C" fn rc_read(conn: *mut Conn, buf: *mut u8, len: usize, status: *mut c_int)
    -> c_long {
    let (n, state) = (*conn).read(std::slice::from_raw_parts_mut(buf, len));
    *status = state;
    n as c_long
}

/// Whether another rc_read has something without touching the socket: decrypted bytes, or the
/// peer's close_notify (which may have come with the last record: the socket then stays
/// silent, and only a read reports the close).
///
/// # Safety
/// `conn` is live.
#[no_mangle]
pub unsafe extern "C" fn rc_has_pending(conn: *const Conn) -> c_int {
    ((*conn).buffered > 0 || (*conn).peer_closed) as c_int
}

/// Encrypts all of `data` and sends what the socket takes: RC_DONE when all is sent,
/// RC_WANT_WRITE when the rest waits for rc_flush, or an error.
///
/// # Safety
/// `conn` is live; `data` has `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn rc_write(conn: *mut Conn, data: *const u8, len: usize) -> c_int {
    let conn = &mut *conn;
    if let Err(e) = conn.tls.writer().write_all(std::slice::from_raw_parts(data, len)) {
        return os_error(&e);
    }
    conn.flush()
}

/// Sends what waits: RC_DONE, RC_WANT_WRITE or an error.
///
/// # Safety
/// `conn` is live.
#[no_mangle]
pub unsafe extern "C" fn rc_flush(conn: *mut Conn) -> c_int {
    (*conn).flush()
}

/// Our close_notify, sent if the socket takes it now; the peer's is not waited for.
///
/// # Safety
/// `conn` is live.
#[no_mangle]
pub unsafe extern "C" fn rc_close(conn: *mut Conn) {
    let conn = &mut *conn;
    conn.tls.send_close_notify();
    conn.flush();
}

/// OpenSSL's name of a suite, so reports read the same whichever stack made them.
fn openssl_name(suite: SupportedCipherSuite) -> String {
    let name = format!("{:?}", suite.suite());
    if let Some(rest) = name.strip_prefix("TLS13_") {
        return format!("TLS_{rest}");
    }
    match name.as_str() {
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => "ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => "ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => "ECDHE-ECDSA-CHACHA20-POLY1305",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => "ECDHE-RSA-AES128-GCM-SHA256",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => "ECDHE-RSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => "ECDHE-RSA-CHACHA20-POLY1305",
        _ => return name,
    }
    .to_owned()
}

/// The session as Python's ssl names it: "TLSv1.3", the suite, and whether it was resumed.
///
/// # Safety
/// `conn` is live; `version` and `cipher` have their lengths in writable bytes.
#[no_mangle]
pub unsafe extern "C" fn rc_info(conn: *const Conn, version: *mut c_char, version_len: usize,
                                 cipher: *mut c_char, cipher_len: usize, resumed: *mut c_int) {
    let tls = &(*conn).tls;
    let protocol = match tls.protocol_version() {
        Some(ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "",
    };
    put_text(protocol, version, version_len);
    put_text(&tls.negotiated_cipher_suite().map(openssl_name).unwrap_or_default(), cipher,
             cipher_len);
    *resumed = (tls.handshake_kind() == Some(HandshakeKind::Resumed)) as c_int;
}

/// What ended the session, as Python's ssl words it; 1 when the certificate was refused
/// (SSLCertVerificationError), else 0 (SSLError).
///
/// # Safety
/// `conn` is live; `text` has `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn rc_error(conn: *const Conn, text: *mut c_char, len: usize) -> c_int {
    match &(*conn).error {
        Some(rustls::Error::InvalidCertificate(why)) => {
            put_text(&format!("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {why:?}"),
                     text, len);
            1
        }
        Some(e) => {
            put_text(&format!("[SSL] {e}"), text, len);
            0
        }
        None => {
            put_text("[SSL] unknown error", text, len);
            0
        }
    }
}
