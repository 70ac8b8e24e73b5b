"""What each end of a full TLS 1.3 handshake costs in two TLS stacks, back to back in memory
(no sockets, no SMTP): OpenSSL 3.0 through Python's ssl (the receiver's library, and the sender
engine's for its OpenSSL profiles) and rustls 0.23 with ring (bench/tls_client_halves, built
with cargo; the engine's client for its default profile). Why: the sender's STARTTLS cost was
mostly OpenSSL's client work (docs/results.md); this says what each client stack costs. Each
figure is the mean of --repeat rounds with its 95% confidence interval.

Usage: python bench/tls_client_halves.py [--handshakes 500] [--repeat 3]
                                         [--key-types ecdsa-p256,rsa2048]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

from fixtures import certificate_files  # bench/ is on sys.path
from receiver_cost import in_process_handshake_cpu_us
from tlsstorm.common.intervals import shown
from tlsstorm.common.machine import machine_note

RUST_BENCH = Path(__file__).resolve().parent / "tls_client_halves"


def rustls_binary(name: str = "tls_client_halves") -> Path:
    """One of the crate's rustls programs, built (cargo fetches its crates the first time)."""
    if not shutil.which("cargo"):
        raise SystemExit("cargo is needed for the rustls side (https://rustup.rs)")
    subprocess.run(["cargo", "build", "--release", "--quiet", "--locked", "--manifest-path",
                    str(RUST_BENCH / "Cargo.toml")], check=True, timeout=900)
    return RUST_BENCH / "target" / "release" / name


def rustls_halves(binary: Path, cert: Path, key: Path, handshakes: int) -> tuple[float, float]:
    finished = subprocess.run([str(binary), str(cert), str(key), str(handshakes)],
                              capture_output=True, text=True, check=True, timeout=300)
    server_us, client_us = map(float, finished.stdout.split())
    return server_us, client_us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handshakes", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--key-types", default="ecdsa-p256,rsa2048")
    flags = parser.parse_args()
    binary = rustls_binary()
    print(f"machine: {machine_note()}")
    print(f"TLS 1.3, X25519, no tickets, one self-signed certificate; {flags.handshakes} "
          f"handshakes per round, {flags.repeat} rounds; thread CPU per handshake, "
          "mean +- 95% confidence interval")
    print(f"{'certificate':<14}{'stack':<28}{'server (us)':>16}{'client (us)':>16}")
    for key_type in flags.key_types.split(","):
        with tempfile.TemporaryDirectory() as folder:
            cert, key = certificate_files(Path(folder), key_type)
            openssl = [in_process_handshake_cpu_us(cert, key, flags.handshakes)
                       for _ in range(flags.repeat)]
            rustls = [rustls_halves(binary, cert, key, flags.handshakes)
                      for _ in range(flags.repeat)]
        print(f"{key_type:<14}{'OpenSSL 3.0 via Python ssl':<28}"
              f"{shown([half.server_us for half in openssl]):>16}"
              f"{shown([half.client_us for half in openssl]):>16}")
        print(f"{'':<14}{'rustls 0.23 (ring)':<28}{shown([s for s, _ in rustls]):>16}"
              f"{shown([c for _, c in rustls]):>16}")


if __name__ == "__main__":
    main()
