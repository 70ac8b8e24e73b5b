//! The floor of a compiled STARTTLS sender on rustls: the whole SMTP conversation the sender's
//! engine holds (EHLO, STARTTLS, EHLO, MAIL, RCPT, DATA, QUIT), over real sockets to a real
//! receiver, with no Python around it. bench/client_stack_floor.py sets it beside the engine.
//! Usage: smtp_client_floor HOST PORT plain|starttls COUNT RATE WORKERS SIZE
//! Prints "ok failed" once every conversation has ended; its CPU is read by the caller, from
//! the kernel's account of the finished process.
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tlsstorm_rustls::NoChainCheck;

/// One reply, its lines joined; Err when the code is not the expected one.
fn reply<R: BufRead>(reader: &mut R, expected: &str) -> Result<String, String> {
    let mut text = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err("the connection ended".into());
        }
        text.push_str(&line);
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            break;
        }
    }
    if text.starts_with(expected) { Ok(text) } else { Err(text) }
}

fn command<S: Read + Write>(stream: &mut BufReader<S>, line: &[u8], expected: &str) -> Result<String, String> {
    stream.get_mut().write_all(line).map_err(|e| e.to_string())?;
    reply(stream, expected)
}

/// EHLO to QUIT, once the session (plain, or inside TLS) is up.
fn mail<S: Read + Write>(stream: &mut BufReader<S>, message: &[u8]) -> Result<(), String> {
    command(stream, b"MAIL FROM:<bot@tlsstorm.test>\r\n", "250")?;
    command(stream, b"RCPT TO:<sink@tlsstorm.test>\r\n", "250")?;
    command(stream, b"DATA\r\n", "354")?;
    command(stream, message, "250")?;
    command(stream, b"QUIT\r\n", "221")?;
    Ok(())
}

fn conversation(address: &str, tls: Option<&Arc<ClientConfig>>, message: &[u8]) -> Result<(), String> {
    let socket = TcpStream::connect(address).map_err(|e| e.to_string())?;
    socket.set_nodelay(true).map_err(|e| e.to_string())?;
    socket.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    let mut plain = BufReader::new(socket);
    reply(&mut plain, "220")?;
    command(&mut plain, b"EHLO bot.tlsstorm.test\r\n", "250")?;
    let Some(config) = tls else { return mail(&mut plain, message) };
    command(&mut plain, b"STARTTLS\r\n", "220")?;
    if !plain.buffer().is_empty() {
        return Err("data after the 220 to STARTTLS".into());
    }
    let name = ServerName::try_from("receiver.tlsstorm.test").unwrap();
    let connection = ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
    let mut secure = BufReader::new(StreamOwned::new(connection, plain.into_inner()));
    command(&mut secure, b"EHLO bot.tlsstorm.test\r\n", "250")?;
    mail(&mut secure, message)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let address = format!("{}:{}", args[1], args[2]);
    let starttls = args[3] == "starttls";
    let count: u64 = args[4].parse().unwrap();
    let rate: f64 = args[5].parse().unwrap();
    let workers: u64 = args[6].parse().unwrap();
    let size: usize = args[7].parse().unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12]).unwrap()
        .dangerous().with_custom_certificate_verifier(Arc::new(NoChainCheck(provider.clone())))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    let config = Arc::new(config);
    let mut message = b"From: <bot@tlsstorm.test>\r\nTo: <sink@tlsstorm.test>\r\nSubject: tlsstorm floor\r\n\r\n".to_vec();
    let line = b"Buy cheap watches now! Limited offer for TLS spam research only. tlsstorm.\r\n";
    while message.len() + line.len() <= size {
        message.extend_from_slice(line);
    }
    message.extend_from_slice(b".\r\n");
    let message = Arc::new(message);
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..workers).map(|_| {
        let (next, failed, message, config, address) =
            (next.clone(), failed.clone(), message.clone(), config.clone(), address.clone());
        std::thread::spawn(move || loop {
            let index = next.fetch_add(1, Ordering::Relaxed);
            if index >= count {
                break;
            }
            let due = started + Duration::from_secs_f64(index as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if let Err(why) = conversation(&address, starttls.then_some(&config), &message) {
                if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("first failure: {why}");
                }
            }
        })
    }).collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let failed = failed.load(Ordering::Relaxed);
    println!("{} {}", count - failed, failed);
}
