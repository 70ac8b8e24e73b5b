//! Thread CPU per full TLS 1.3 handshake of each end, rustls (ring) over memory, back to back:
//! the same measure as bench/receiver_cost.py's in-process anchor for OpenSSL through Python.
//! Usage: tls_client_halves CERT.pem KEY.pem ROUNDS; prints "server_us client_us".
//! The client checks the server's handshake signature, not its chain: as the sender does
//! without a CA file (Python's CERT_NONE, which still verifies CertificateVerify).
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};
use std::sync::Arc;
use tlsstorm_rustls::NoChainCheck;

fn cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (cert, key, rounds) = (&args[1], &args[2], args[3].parse::<u64>().unwrap());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer> = CertificateDer::pem_file_iter(cert).unwrap().map(|c| c.unwrap()).collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let mut server_config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13]).unwrap()
        .with_no_client_auth().with_single_cert(chain, key).unwrap();
    server_config.send_tls13_tickets = 0;
    let server_config = Arc::new(server_config);
    let client_config = Arc::new(ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13]).unwrap()
        .dangerous().with_custom_certificate_verifier(Arc::new(NoChainCheck(provider.clone())))
        .with_no_client_auth());
    let name = ServerName::try_from("localhost").unwrap();
    let (mut client_ns, mut server_ns) = (0u64, 0u64);
    for _ in 0..rounds {
        let t = cpu_ns();
        let mut client = ClientConnection::new(client_config.clone(), name.clone()).unwrap();
        client_ns += cpu_ns() - t;
        let t = cpu_ns();
        let mut server = ServerConnection::new(server_config.clone()).unwrap();
        server_ns += cpu_ns() - t;
        let mut wire = Vec::new();
        while client.is_handshaking() || server.is_handshaking() {
            let t = cpu_ns();
            wire.clear();
            while client.wants_write() { client.write_tls(&mut wire).unwrap(); }
            client_ns += cpu_ns() - t;
            let t = cpu_ns();
            if !wire.is_empty() { server.read_tls(&mut &wire[..]).unwrap(); server.process_new_packets().unwrap(); }
            wire.clear();
            while server.wants_write() { server.write_tls(&mut wire).unwrap(); }
            server_ns += cpu_ns() - t;
            let t = cpu_ns();
            if !wire.is_empty() { client.read_tls(&mut &wire[..]).unwrap(); client.process_new_packets().unwrap(); }
            client_ns += cpu_ns() - t;
        }
    }
    println!("{:.1} {:.1}", server_ns as f64 / rounds as f64 / 1000.0,
             client_ns as f64 / rounds as f64 / 1000.0);
}
