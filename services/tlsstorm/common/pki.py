"""Server certificates as mail servers present them: a CA-issued leaf plus its intermediates.

The chain is most of what a receiver sends in a STARTTLS session, so its shape decides the
outbound bytes tlsstorm measures. Certificates carry the extensions public CAs put in (RFC 5280
profiles of the CA/Browser Forum baseline requirements), issued under a made-up test root.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import (
    AuthorityInformationAccessOID,
    CertificatePoliciesOID,
    ExtendedKeyUsageOID,
    NameOID,
    ObjectIdentifier,
)

KEY_TYPES = ("rsa2048", "rsa3072", "rsa4096", "ecdsa-p256", "ecdsa-p384")
if TYPE_CHECKING:
    from tlsstorm.common.config import ReceiverSettings

CA_BASE_URL = "http://pki.tlsstorm.test"
# CA/Browser Forum: domain validated (what Let's Encrypt and most MTA certificates are).
_DOMAIN_VALIDATED = ObjectIdentifier("2.23.140.1.2.1")
# RFC 6962's embedded SCT list; public CAs embed two or three SCTs in every leaf.
_SCT_LIST_OID = ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")
_SCTS_PER_LEAF = 2


@dataclass(frozen=True)
class CertificatePair:
    """PEM certificate(s), leaf first, and the leaf's PEM private key."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def certificates(self) -> list[x509.Certificate]:
        return x509.load_pem_x509_certificates(self.cert_pem)

    @property
    def cert_der(self) -> bytes:
        return self.certificates[0].public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class ServerCertificate:
    """What the receiver serves (leaf + intermediates) and the root a client would trust."""

    served: CertificatePair
    root_pem: bytes | None
    source: str  # "chain", "self-signed" or "files"

    def describe(self) -> list[dict[str, object]]:
        """Each certificate sent in the handshake, leaf first: role, key, size on the wire."""
        certificates = self.served.certificates
        return [
            {"role": "leaf" if index == 0 else "intermediate",
             "subject": certificate.subject.rfc4514_string(),
             "key_type": key_type_of(certificate),
             "der_bytes": len(certificate.public_bytes(serialization.Encoding.DER))}
            for index, certificate in enumerate(certificates)
        ]

    def summary(self) -> str:
        """'leaf rsa2048 1,190 B + intermediate rsa2048 1,306 B', for reports."""
        return " + ".join(f"{entry['role']} {entry['key_type']} {entry['der_bytes']:,} B"
                          for entry in self.describe())


def private_key(key_type: str):
    if key_type.startswith("rsa") and key_type[3:] in ("2048", "3072", "4096"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[3:]))
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ecdsa-p384":
        return ec.generate_private_key(ec.SECP384R1())
    raise ValueError(f"unknown key type {key_type!r}: use one of {', '.join(KEY_TYPES)}")


def key_type_of(certificate: x509.Certificate) -> str:
    """The settings' name for a certificate's key (ecdsa-p256, not OpenSSL's secp256r1)."""
    key = certificate.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return f"rsa{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return {"secp256r1": "ecdsa-p256", "secp384r1": "ecdsa-p384"}.get(
            key.curve.name, f"ecdsa-{key.curve.name}")
    return type(key).__name__


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _signature_hash(issuer_key) -> hashes.HashAlgorithm:
    if isinstance(issuer_key, ec.EllipticCurvePrivateKey) and issuer_key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def _names(hostname: str, extra_names: list[str]) -> list[x509.GeneralName]:
    """The hostname, the extra names, then localhost and 127.0.0.1 (local runs verify too)."""
    entries: list[x509.GeneralName] = []
    for name in [hostname, *extra_names, "localhost", "127.0.0.1"]:
        try:
            entry: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(name))
        except ValueError:
            entry = x509.DNSName(name)
        if entry not in entries:
            entries.append(entry)
    return entries


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def _builder(subject: x509.Name, issuer: x509.Name, public_key, days: int):
    now = _now()
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key),
                           critical=False))


def _issued_by(builder: x509.CertificateBuilder, issuer: x509.Certificate, slug: str):
    """The links a public CA puts in what it issues: its key id, where to fetch its
    certificate and revocation status, and its CRL."""
    try:  # the issuer's own key id when it has one (a Helm-made root may not)
        key_id = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value)
    except x509.ExtensionNotFound:
        key_id = x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer.public_key())  # type: ignore[arg-type]
    return (builder
            .add_extension(key_id, critical=False)
            .add_extension(x509.AuthorityInformationAccess([
                x509.AccessDescription(AuthorityInformationAccessOID.OCSP,
                                       x509.UniformResourceIdentifier(f"{CA_BASE_URL}/ocsp")),
                x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS,
                                       x509.UniformResourceIdentifier(
                                           f"{CA_BASE_URL}/{slug}.der")),
            ]), critical=False)
            .add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(f"{CA_BASE_URL}/{slug}.crl")],
                relative_name=None, reasons=None, crl_issuer=None)]), critical=False))


def _sct_list() -> x509.UnrecognizedExtension:
    """An embedded SCT list of the size real ones have (two ECDSA-signed SCTs from made-up logs:
    well-formed, not verifiable), so the leaf weighs what a public CA's leaf weighs."""
    log_key = ec.generate_private_key(ec.SECP256R1())
    scts = b""
    for _ in range(_SCTS_PER_LEAF):
        signature = log_key.sign(os.urandom(32), ec.ECDSA(hashes.SHA256()))
        timestamp_ms = int(_now().timestamp() * 1000)
        body = (b"\x00" + hashlib.sha256(os.urandom(16)).digest()
                + struct.pack(">Q", timestamp_ms) + struct.pack(">H", 0)
                + b"\x04\x03" + struct.pack(">H", len(signature)) + signature)
        scts += struct.pack(">H", len(body)) + body
    listed = struct.pack(">H", len(scts)) + scts
    # The extension's value is a DER OCTET STRING holding the TLS-encoded list.
    return x509.UnrecognizedExtension(_SCT_LIST_OID,
                                      b"\x04\x81" + bytes([len(listed)]) + listed)


def _ca_name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "XX"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tlsstorm test PKI"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_root(key_type: str = "rsa4096") -> tuple[x509.Certificate, object]:
    key = private_key(key_type)
    name = _ca_name("tlsstorm Test Root X1")
    certificate = (_builder(name, name, key.public_key(), days=20 * 365)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None),
                                  critical=True)
                   .add_extension(_ca_key_usage(), critical=True)
                   .sign(key, _signature_hash(key)))
    return certificate, key


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=True, crl_sign=True, encipher_only=False,
                         decipher_only=False)


def issue_chain(hostname: str, extra_names: list[str], root: x509.Certificate, root_key,
                leaf_key_type: str = "rsa2048", intermediate_key_type: str = "rsa2048",
                intermediates: int = 1) -> CertificatePair:
    """Intermediates under the root, then a 90-day leaf; the pair holds leaf + intermediates."""
    issuer, issuer_key, issuer_slug = root, root_key, "root"
    issued: list[x509.Certificate] = []
    for level in range(intermediates):
        key = private_key(intermediate_key_type)
        # The CA closest to the leaf is R1, the one above it R2...
        number = intermediates - level
        builder = _builder(_ca_name(f"tlsstorm Test Issuing CA R{number}"), issuer.subject,
                           key.public_key(), days=3 * 365)
        certificate = (_issued_by(builder, issuer, issuer_slug)
                       .add_extension(x509.BasicConstraints(
                           ca=True, path_length=intermediates - level - 1), critical=True)
                       .add_extension(_ca_key_usage(), critical=True)
                       .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                             ExtendedKeyUsageOID.CLIENT_AUTH]),
                                      critical=False)
                       .add_extension(x509.CertificatePolicies([
                           x509.PolicyInformation(CertificatePoliciesOID.ANY_POLICY, None)]),
                           critical=False)
                       .sign(issuer_key, _signature_hash(issuer_key)))
        issued.insert(0, certificate)
        issuer, issuer_key, issuer_slug = certificate, key, f"r{number}"
    leaf_key = private_key(leaf_key_type)
    rsa_leaf = isinstance(leaf_key, rsa.RSAPrivateKey)
    builder = _builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]),
                       issuer.subject, leaf_key.public_key(), days=90)
    leaf = (_issued_by(builder, issuer, issuer_slug)
            .add_extension(x509.SubjectAlternativeName(_names(hostname, extra_names)),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=rsa_leaf, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.CertificatePolicies([
                x509.PolicyInformation(_DOMAIN_VALIDATED, None)]), critical=False)
            .add_extension(_sct_list(), critical=False)
            .sign(issuer_key, _signature_hash(issuer_key)))
    return CertificatePair(cert_pem=b"".join(_pem(c) for c in [leaf, *issued]),
                           key_pem=_key_pem(leaf_key))


def self_signed(hostname: str, key_type: str = "rsa2048", days: int = 365,
                extra_names: list[str] | None = None) -> CertificatePair:
    """A self-signed server certificate, as many test setups serve."""
    key = private_key(key_type)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    cert = (_builder(name, name, key.public_key(), days)
            .add_extension(x509.SubjectAlternativeName(_names(hostname, extra_names or [])),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return CertificatePair(cert_pem=_pem(cert), key_pem=_key_pem(key))


def load_pair(cert_file: Path, key_file: Path) -> CertificatePair:
    return CertificatePair(cert_pem=cert_file.read_bytes(), key_pem=key_file.read_bytes())


def load_root(cert_file: Path, key_file: Path) -> tuple[x509.Certificate, object]:
    """A CA to issue from (the chart keeps one in a Secret across upgrades)."""
    certificate = x509.load_pem_x509_certificate(cert_file.read_bytes())
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    return certificate, key


def root_pem(certificate: x509.Certificate) -> bytes:
    return _pem(certificate)


def server_certificate(settings: ReceiverSettings) -> ServerCertificate:
    """The user's files, or a chain issued under a root (the given one, else a new one), or
    one self-signed certificate, as the settings say."""
    if settings.cert_file and settings.key_file:
        return ServerCertificate(load_pair(settings.cert_file, settings.key_file), None, "files")
    names = list(settings.cert_names)
    if settings.cert_shape == "self-signed":
        pair = self_signed(settings.hostname, settings.cert_key_type, extra_names=names)
        return ServerCertificate(pair, pair.cert_pem, "self-signed")
    if settings.ca_cert_file and settings.ca_key_file:
        root, root_key = load_root(settings.ca_cert_file, settings.ca_key_file)
    else:
        root, root_key = make_root(settings.cert_root_key_type)
    pair = issue_chain(settings.hostname, names, root, root_key, settings.cert_key_type,
                       settings.cert_intermediate_key_type, settings.cert_intermediates)
    return ServerCertificate(pair, root_pem(root), "chain")
