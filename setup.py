"""The sender's SMTP engine (sender/engine.py loads it with ctypes): C, with OpenSSL and a rustls
client that cargo builds as a static library first. Needs a C compiler, OpenSSL's headers and
cargo (Debian: gcc, libssl-dev, cargo-web; make build-deps installs them). Without them tlsstorm
installs all the same, and its sender uses the reference engine (pure Python on aiosmtplib),
saying so: the build is optional, and says why it was skipped."""

import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ENGINE = Path("services/tlsstorm/sender/engine")
RUSTLS_CRATE = ENGINE / "rustls_client"


class BuildWithRustls(build_ext):
    """Builds the rustls crate (as locked) before linking the engine against it."""

    def run(self) -> None:
        cargo = shutil.which("cargo")
        if cargo is None:
            print("warning: tlsstorm's native SMTP engine is not built: it needs cargo (Debian: "
                  "apt-get install cargo-web; or https://rustup.rs); the sender will use its "
                  "reference engine (aiosmtplib), at several times the CPU per message",
                  file=sys.stderr)
            return
        target = Path(self.build_temp).resolve() / "cargo"
        subprocess.run([cargo, "build", "--release", "--locked", "--quiet", "--manifest-path",
                        str(RUSTLS_CRATE / "Cargo.toml"), "--target-dir", str(target)], check=True)
        library = target / "release" / "libtlsstorm_rustls.a"
        for extension in self.extensions:
            extension.extra_objects = [str(library)]
            extension.depends = [*extension.depends, str(library)]
        super().run()


setup(
    ext_modules=[Extension(
        "tlsstorm.sender._smtp_engine",
        sources=[str(ENGINE / "smtp_engine.c")],
        depends=[str(ENGINE / "rustls_client.h")],
        libraries=["ssl", "crypto", "pthread", "dl", "m"],
        extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror"],
        # The static library's own symbols stay inside the engine; unused code is dropped.
        extra_link_args=["-Wl,--exclude-libs,ALL", "-Wl,--gc-sections"],
        optional=True,  # no compiler or headers: installed without it (a warning says so)
    )],
    cmdclass={"build_ext": BuildWithRustls},
)
