#!/usr/bin/python3
"""The static build's AES-GCM (cmake/nbd_gcm_alt.c, mbedTLS's GCM_ALT)
against OpenSSL's (Python's cryptography): random keys of 128, 192 and
256 bits, 12-byte and other IV lengths (8 to 128), AAD of 0 to 70 bytes, data of 0
to 5000 bytes given to mbedtls_gcm_update whole or in 16- to 160-byte
pieces; the ciphertext and tag must be OpenSSL's, the decryption must
give the data back, and a flipped tag bit must fail; on the AES-NI
path and on the portable one.  Also the NIST
test case 4 of the GCM paper.  Skips without the helper (a glibc build
links Debian's mbedTLS, which has no GCM_ALT) or without cryptography."""

import os
import random
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest as T                       # noqa: E402
from nbdtest import Checker, check, check_eq  # noqa: E402

helper = os.path.join(os.path.dirname(T.NBDSTACK), "nbd_gcm_check")
if not os.access(helper, os.X_OK):
    T.skip("%s not built (the musl build with mbedTLS from source makes it)" % helper)
try:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
except ImportError:
    T.skip("python3-cryptography is not installed")

C = Checker("test_gcm_alt")


def h(b):
    return b.hex() if b else "-"


def ours(cases, env=None):
    text = "".join("%s %s %s %s %d\n" % (h(k), h(iv), h(a), h(p), s)
                   for k, iv, a, p, s in cases)
    r = subprocess.run([helper], input=text, capture_output=True, text=True, timeout=300,
                       env=env)
    check_eq(r.returncode, 0, "nbd_gcm_check status")
    return [ln.split() for ln in r.stdout.splitlines()]


def openssl(k, iv, a, p):
    e = Cipher(algorithms.AES(k), modes.GCM(iv)).encryptor()
    if a:
        e.authenticate_additional_data(a)
    c = e.update(p) + e.finalize()
    return c, e.tag


def t_random(portable=False):
    rng = random.Random(15)
    cases = []
    for i in range(600):
        k = rng.randbytes(rng.choice((16, 24, 32)))
        iv = rng.randbytes(12 if i % 3 else rng.choice((8, 16, 17, 60, 128)))
        a = rng.randbytes(rng.choice((0, 0, 5, 13, 16, 32, 70)))
        n = rng.choice((0, 1, 15, 16, 17, 31, 127, 128, 129, 255, 256, 1000, 4096, 5000))
        split = rng.choice((0, 0, 16, 48, 128, 160))
        cases.append((k, iv, a, rng.randbytes(n), split))
    out = ours(cases, dict(os.environ, NBD_GCM_PORTABLE="1") if portable else None)
    check_eq(len(out), len(cases), "result lines")
    bad = 0
    for (k, iv, a, p, s), got in zip(cases, out):
        c, tag = openssl(k, iv, a, p)
        if got != [h(c), tag.hex(), h(p), "REFUSED"]:
            if bad < 3:
                T.log("differs: key %d bits, iv %d, aad %d, data %d, split %d"
                      % (8 * len(k), len(iv), len(a), len(p), s))
            bad += 1
    check_eq(bad, 0, "cases that differ from OpenSSL")


def t_nist():
    # McGrew and Viega, "The Galois/Counter Mode of Operation", test case 4.
    k = bytes.fromhex("feffe9928665731c6d6a8f9467308308")
    iv = bytes.fromhex("cafebabefacedbaddecaf888")
    a = bytes.fromhex("feedfacedeadbeeffeedfacedeadbeefabaddad2")
    p = bytes.fromhex("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
                      "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39")
    out = ours([(k, iv, a, p, 0)])
    check_eq(out[0][1], "5bc94fbc3221a5db94fae95ae7121a47", "test case 4 tag")
    check(out[0][0].startswith("42831ec2217774244b7221b784d0d49c"), "test case 4 ciphertext")


C.run("600 random cases equal OpenSSL's, a changed tag refused (AES-NI)", t_random)
C.run("the same on the portable path (NBD_GCM_PORTABLE=1)", t_random, True)
C.run("NIST/GCM paper test case 4", t_nist)
C.finish()
