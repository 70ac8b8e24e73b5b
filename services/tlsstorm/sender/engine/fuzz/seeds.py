"""Writes the fuzz target's seed corpus (fuzz/corpus): conversations a real server has, in the
input format replies.c reads, from which libFuzzer's mutations start. Run it after changing
that format: python3 services/tlsstorm/sender/engine/fuzz/seeds.py"""

from pathlib import Path

CORPUS = Path(__file__).parent / "corpus"
READ_FIRST = 0x80


def event(data: bytes, read_first: bool = True) -> bytes:
    """What the server writes in one go, up to 62 bytes, after reading what the engine sent."""
    assert len(data) < 63
    return bytes([len(data) | (READ_FIRST if read_first else 0)]) + data


def flood(byte: bytes, kib: int) -> bytes:
    return bytes([0x40 | (kib - 1)]) + byte


def flags(starttls=False, traced=False, messages=1, large=False, swapped=False) -> bytes:
    return bytes([starttls | traced << 1 | (messages - 1) << 2 | large << 4 | swapped << 5])


ONE_MESSAGE = [b"250 sender ok\r\n", b"250 recipient ok\r\n", b"354 go on\r\n",
               b"250 2.0.0 queued as 4F1\r\n"]
SEEDS = {
    "plain": flags() + b"".join(map(event, [b"220 mx.test ESMTP\r\n", b"250 mx.test\r\n",
                                            *ONE_MESSAGE, b"221 bye\r\n"])),
    "plain-traced-two": flags(traced=True, messages=2) + b"".join(map(event, [
        b"220-mx.test\r\n", b"220 ESMTP\r\n", b"250-mx.test\r\n250-SIZE 1000\r\n",
        b"250 8BITMIME\r\n", *ONE_MESSAGE, *ONE_MESSAGE, b"221 bye\r\n"])),
    "starttls": flags(starttls=True) + b"".join(map(event, [
        b"220 mx.test ESMTP\r\n", b"250-mx.test\r\n250 STARTTLS\r\n", b"220 go ahead\r\n",
        b"\x16\x03\x03\x00\x02\x02\x28"])),  # then a TLS alert, as a gate would send
    "starttls-injected": flags(starttls=True) + b"".join(map(event, [
        b"220 mx.test\r\n", b"250 STARTTLS\r\n", b"220 go ahead\r\n250 injected\r\n"])),
    "starttls-refused": flags(starttls=True, messages=2) + b"".join(map(event, [
        b"220 mx.test\r\n", b"250 STARTTLS\r\n", b"454 4.7.0 not now\r\n", *ONE_MESSAGE,
        *ONE_MESSAGE, b"221 bye\r\n"])),
    "early-reply": flags(large=True) + b"".join(map(event, [
        b"220 mx.test\r\n", b"250 mx.test\r\n", *ONE_MESSAGE[:3]]))
        + event(b"250 early\r\n", read_first=False),
    "long-reply": flags(swapped=True) + b"".join(map(event, [b"220 mx.test\r\n",
                                                             b"250 mx.test\r\n"]))
        + flood(b"A", 64) + event(b"\r\n"),
    "closed": flags() + event(b"220 mx.test\r\n") + bytes([0x3f]),
}

if __name__ == "__main__":
    CORPUS.mkdir(exist_ok=True)
    for name, data in SEEDS.items():
        (CORPUS / name).write_bytes(data)
    print(f"{len(SEEDS)} seeds in {CORPUS}")
