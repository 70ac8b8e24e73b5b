"""The receiver's certificate looks like a mail server's: a CA-issued leaf and its intermediates
on the wire, with the extensions public CAs put in, verifiable against the root it publishes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from tests.helpers import assert_verified_by_one_refused_by_other, tcp_packets

TCPDUMP = shutil.which("tcpdump")
SCT_LIST = x509.ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")


def _root_file(receiver, folder: Path) -> Path:
    response = httpx.get(f"{receiver.http}/v1/tls/root.pem")
    assert response.status_code == 200
    path = folder / f"root-{receiver.smtp_port}.pem"
    path.write_bytes(response.content)
    return path


def _s_client(port: int, *args: str) -> str:
    return subprocess.run(
        ["openssl", "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{port}",
         "-showcerts", *args], input="QUIT\r\n", capture_output=True, text=True,
        timeout=30).stdout


def _certificates_seen(output: str) -> list[x509.Certificate]:
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", output,
                        re.DOTALL)
    return [x509.load_pem_x509_certificate(block.encode()) for block in blocks]


def _extension(certificate: x509.Certificate, kind):
    return certificate.extensions.get_extension_for_class(kind)


def _der_size(certificate: x509.Certificate) -> int:
    return len(certificate.public_bytes(serialization.Encoding.DER))


def test_openssl_sees_a_leaf_and_an_intermediate_with_a_public_cas_extensions(
    receiver, tmp_path
):
    root = _root_file(receiver, tmp_path)

    output = _s_client(receiver.smtp_port, "-CAfile", str(root), "-verify_hostname",
                       "localhost", "-verify_return_error")
    leaf, intermediate = _certificates_seen(output)

    assert "Verify return code: 0 (ok)" in output
    assert leaf.issuer == intermediate.subject
    assert _extension(leaf, x509.BasicConstraints).value.ca is False
    names = _extension(leaf, x509.SubjectAlternativeName).value
    assert {"receiver.tlsstorm.test", "localhost"} <= set(names.get_values_for_type(x509.DNSName))
    usage = _extension(leaf, x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    assert list(_extension(leaf, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    for certificate in (leaf, intermediate):
        access = {entry.access_method for entry in
                  _extension(certificate, x509.AuthorityInformationAccess).value}
        assert access == {AuthorityInformationAccessOID.OCSP,
                          AuthorityInformationAccessOID.CA_ISSUERS}
        assert _extension(certificate, x509.CRLDistributionPoints).value
        assert _extension(certificate, x509.CertificatePolicies).value
        assert _extension(certificate, x509.AuthorityKeyIdentifier).value.key_identifier
    # Two SCTs: the few hundred bytes every public CA's leaf carries.
    assert len(leaf.extensions.get_extension_for_oid(SCT_LIST).value.public_bytes()) > 200
    constraints = _extension(intermediate, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    assert _extension(intermediate, x509.KeyUsage).value.key_cert_sign

    served = httpx.get(f"{receiver.http}/v1/tls").json()
    assert served["cert_source"] == "chain"
    assert [entry["der_bytes"] for entry in served["chain"]] == [_der_size(leaf),
                                                                 _der_size(intermediate)]
    assert served["chain_der_bytes"] == _der_size(leaf) + _der_size(intermediate)


def test_a_wrong_root_or_name_fails_verification(start_receiver, receiver, tmp_path):
    other_root = _root_file(start_receiver(), tmp_path)
    own_root = _root_file(receiver, tmp_path)

    wrong_root = _s_client(receiver.smtp_port, "-CAfile", str(other_root),
                           "-verify_return_error")
    wrong_name = _s_client(receiver.smtp_port, "-CAfile", str(own_root),
                           "-verify_hostname", "mail.example.com", "-verify_return_error")

    # Each refused for its own reason, after STARTTLS reached the handshake: not a client that
    # never connected, nor a broken STARTTLS, nor the other failure.
    assert "unable to get local issuer certificate" in wrong_root, wrong_root[-2000:]
    assert "hostname mismatch" in wrong_name, wrong_name[-2000:]
    assert "hostname mismatch" not in wrong_root and "local issuer" not in wrong_name
    right = _s_client(receiver.smtp_port, "-CAfile", str(own_root), "-verify_hostname",
                      "receiver.tlsstorm.test", "-verify_return_error")
    assert "Verify return code: 0 (ok)" in right, right[-2000:]


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"cert_intermediates": 2, "cert_key_type": "ecdsa-p256",
      "cert_intermediate_key_type": "ecdsa-p384", "cert_root_key_type": "rsa2048"},
     ["ecdsa-p256", "ecdsa-p384", "ecdsa-p384"]),
    ({"cert_key_type": "rsa3072", "cert_intermediate_key_type": "rsa4096"},
     ["rsa3072", "rsa4096"]),
    ({"cert_shape": "self-signed", "cert_key_type": "ecdsa-p384"}, ["ecdsa-p384"]),
], ids=["longer-ecdsa-chain", "rsa-sizes", "self-signed"])
def test_shape_and_key_types_are_what_a_client_receives(start_receiver, tmp_path, overrides,
                                                        expected):
    from tlsstorm.common.pki import key_type_of

    receiver = start_receiver(**overrides)
    root = _root_file(receiver, tmp_path)

    output = _s_client(receiver.smtp_port, "-CAfile", str(root), "-verify_return_error")
    seen = _certificates_seen(output)

    assert "Verify return code: 0 (ok)" in output
    assert [key_type_of(certificate) for certificate in seen] == expected
    served = httpx.get(f"{receiver.http}/v1/tls").json()
    assert [entry["key_type"] for entry in served["chain"]] == expected
    if len(seen) > 2:  # path lengths count down to the leaf
        assert [_extension(c, x509.BasicConstraints).value.path_length
                for c in seen[1:]] == [0, 1]


def test_the_sender_verifies_against_the_published_root_and_only_that(
    start_receiver, start_sender, receiver, tmp_path
):
    root = _root_file(receiver, tmp_path)
    other_root = _root_file(start_receiver(), tmp_path)
    verifying = start_sender(receiver.smtp_port, ca_file=root)
    distrusting = start_sender(receiver.smtp_port, ca_file=other_root)

    assert_verified_by_one_refused_by_other(verifying, distrusting)


def test_own_files_are_served_as_given_and_have_no_root_here(start_receiver, receiver, tmp_path):
    """A PEM bundle (leaf, then intermediate) is served whole; its root is the user's."""
    bundle, key = tmp_path / "bundle.pem", tmp_path / "key.pem"
    served = receiver.service.certificate.served
    bundle.write_bytes(served.cert_pem)
    key.write_bytes(served.key_pem)
    own = start_receiver(cert_file=bundle, key_file=key)

    seen = _certificates_seen(_s_client(own.smtp_port))

    assert [c.public_bytes(serialization.Encoding.PEM) for c in seen] == \
        [c.public_bytes(serialization.Encoding.PEM) for c in served.certificates]
    assert httpx.get(f"{own.http}/v1/tls").json()["cert_source"] == "files"
    missing = httpx.get(f"{own.http}/v1/tls/root.pem")
    assert missing.status_code == 404 and "their root is not known" in missing.json()["detail"]


def _bytes_from_server(pcap: Path, port: int) -> tuple[int, int]:
    """(connections opened, payload bytes the server sent) in a loopback capture."""
    connections = sent = 0
    for packet in tcp_packets(pcap):
        if packet.destination_port == port and packet.flags & 0x12 == 0x02:  # SYN
            connections += 1
        elif packet.source_port == port:
            sent += packet.payload
    return connections, sent


@pytest.mark.skipif(not TCPDUMP and os.environ.get("CI") != "true",
                    reason="tcpdump is not installed (make system-deps installs it)")
def test_a_capture_sees_each_session_grow_by_the_added_intermediate(
    start_receiver, start_sender, tmp_path
):
    """The same leaf key and intermediate key, one intermediate more: every STARTTLS session
    carries exactly that certificate more (plus its 5-byte TLS 1.3 entry header)."""
    sessions = 10
    out_per_session = {}
    chain_bytes = {}
    for intermediates in (1, 2):
        receiver = start_receiver(cert_intermediates=intermediates, session_tickets=False)
        sender = start_sender(receiver.smtp_port)
        pcap = tmp_path / f"chain{intermediates}.pcap"
        capture = subprocess.Popen(
            [TCPDUMP or "tcpdump", "-i", "lo", "-U", "--immediate-mode", "-w", str(pcap),
             "-s", "128", f"tcp port {receiver.smtp_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)  # tcpdump is listening
        response = httpx.post(f"{sender.http}/v1/send", json={"tls": True, "count": sessions},
                              timeout=60)
        assert all(result["ok"] for result in response.json()["results"])
        receiver.wait_sessions(sessions)
        time.sleep(0.5)
        capture.terminate()
        capture.wait(10)
        connections, sent = _bytes_from_server(pcap, receiver.smtp_port)
        assert connections == sessions
        out_per_session[intermediates] = sent / sessions
        chain_bytes[intermediates] = httpx.get(f"{receiver.http}/v1/tls").json()[
            "chain_der_bytes"]

    added = chain_bytes[2] - chain_bytes[1]
    assert added > 1000  # an RSA-2048 intermediate
    assert out_per_session[2] - out_per_session[1] == pytest.approx(added + 5, abs=8)
