"""Span attribute names: OpenTelemetry semantic conventions where they exist, tlsstorm.* else."""

SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
CLIENT_ADDRESS = "client.address"
CLIENT_PORT = "client.port"
NETWORK_TRANSPORT = "network.transport"
NETWORK_PROTOCOL_NAME = "network.protocol.name"
TLS_ESTABLISHED = "tls.established"
TLS_PROTOCOL_NAME = "tls.protocol.name"
TLS_PROTOCOL_VERSION = "tls.protocol.version"
TLS_CIPHER = "tls.cipher"
TLS_RESUMED = "tls.resumed"
ERROR_TYPE = "error.type"

SMTP_REPLY_CODE = "smtp.reply.code"
SMTP_MESSAGES = "smtp.messages"
MODE = "tlsstorm.mode"
MESSAGE_BYTES = "tlsstorm.message.bytes"
WIRE_BYTES_IN = "tlsstorm.wire.bytes_in"
WIRE_BYTES_OUT = "tlsstorm.wire.bytes_out"
SESSION_CPU_US = "tlsstorm.session.cpu_us"
# The CPU the receiver spent in a handshake (its span's duration is wall time, client included).
HANDSHAKE_CPU_US = "tlsstorm.handshake.cpu_us"
WAVE_ID = "tlsstorm.wave.id"
CERT_VERIFIED = "tlsstorm.tls.cert_verified"
# The certificates the receiver served, leaf first: "leaf rsa2048 1,384 B + intermediate ...".
CERT_CHAIN = "tlsstorm.tls.chain"
TLS_CLIENT_JA4 = "tls.client.ja4"  # the ClientHello's JA4, when the receiver's gate read it
GATE_DECISION = "tlsstorm.gate.decision"  # allowed, denied, would_deny
GATE_RULE = "tlsstorm.gate.rule"
SIDE = "tlsstorm.side"

SPAN_SESSION = "smtp.session"
SPAN_SEND = "smtp.send"
SPAN_HANDSHAKE = "tls.handshake"
# Once a second, a service's process CPU against its limit; the receiver's adds what it charged
# to sessions in that second, its RSS and its open sessions.
SPAN_PROCESS = "tlsstorm.process"
PROCESS_ROLE = "tlsstorm.process.role"  # sender | receiver
CPU_LIMIT_MILLICORES = "tlsstorm.cpu.limit_millicores"
CPU_THROTTLED_US = "tlsstorm.cpu.throttled_us"
CPU_BUSY = "tlsstorm.cpu.busy"  # 1: throttled or above 85% of its limit in that second
PROCESS_CPU_US = "tlsstorm.process.cpu_us"
PROCESS_CHARGED_US = "tlsstorm.process.charged_us"
PROCESS_TELEMETRY_US = "tlsstorm.process.telemetry_us"  # building and exporting spans
PROCESS_RSS_BYTES = "tlsstorm.process.rss_bytes"  # at the end of the second
PROCESS_STARTED = "tlsstorm.process.started"  # 1 on a process's first span: a (re)start
OPEN_PLAIN_SESSIONS = "tlsstorm.sessions.open_plain"  # at the end of the second
OPEN_TLS_SESSIONS = "tlsstorm.sessions.open_tls"
PEAK_PLAIN_SESSIONS = "tlsstorm.sessions.peak_plain"  # the most open at once in the second
PEAK_TLS_SESSIONS = "tlsstorm.sessions.peak_tls"
# A meter's span (role "target"): the watched server's processes, and the meter's own CPU.
METER_PROCESSES = "tlsstorm.meter.processes"
METER_CPU_US = "tlsstorm.meter.cpu_us"


def tls_version_number(openssl_name: str | None) -> str | None:
    """'TLSv1.3' -> '1.3', as tls.protocol.version wants."""
    if not openssl_name:
        return None
    return openssl_name.removeprefix("TLSv")


def handshake_attributes(side: str, established: bool, tls_version: str | None,
                         cipher: str | None, resumed: bool, wave_id: str | None) -> dict:
    """A tls.handshake span's attributes, the same from either side of the handshake."""
    attributes = {
        TLS_ESTABLISHED: established,
        TLS_PROTOCOL_VERSION: tls_version_number(tls_version) or "",
        TLS_CIPHER: cipher or "",
        TLS_RESUMED: resumed,
        SIDE: side,
    }
    if wave_id:
        attributes[WAVE_ID] = wave_id
    return attributes
